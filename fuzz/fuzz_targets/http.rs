//! Arbitrary client bytes through a followed HTTP connection (hyper's server on the
//! client's side, Tollgate's decisions and records, hyper's client to a destination that
//! answers `200 ok`). The first byte picks HTTP/1 (even) or HTTP/2 (odd, the connection
//! preface is sent first). Nothing may panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::HttpHarness;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

thread_local! {
    /// Built once per process (an enforcer, a recorder thread, a scratch store), with a
    /// fresh connection for every input.
    static HARNESS: HttpHarness = HttpHarness::new().expect("the HTTP harness");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let h2 = mode & 1 == 1;
    let input = if h2 {
        [PREFACE, rest].concat()
    } else {
        rest.to_vec()
    };
    HARNESS.with(|harness| {
        let served = harness.serve(&input, h2);
        assert!(
            served.result.as_ref().err().is_none_or(|e| e != "timed out"),
            "a connection hung: {input:?}"
        );
    });
});
