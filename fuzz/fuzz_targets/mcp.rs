//! Arbitrary MCP bytes through a followed HTTP connection to an MCP target: the
//! client's JSON-RPC body and the server's answer (as an SSE stream or a JSON body, cut
//! into chunks at arbitrary places) both come from the input, so the JSON-RPC reader,
//! the SSE reader, the call decisions, the listing filter and the records all see
//! hostile bytes. Nothing may panic or hang.
//!
//! Input: one mode byte (bit 0: SSE), one byte of the body's length share, two cut
//! offsets, then the bytes (the body, then the answer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::HttpHarness;

thread_local! {
    static HARNESS: HttpHarness = HttpHarness::new().expect("the HTTP harness");
}

fuzz_target!(|data: &[u8]| {
    let [mode, share, cut1, cut2, rest @ ..] = data else {
        return;
    };
    let split = rest.len() * usize::from(*share) / 256;
    let (body, answer) = rest.split_at(split);
    let sse = mode & 1 == 1;
    HARNESS.with(|harness| {
        let served = harness.serve_mcp(body, answer, sse, &[usize::from(*cut1), usize::from(*cut2) * 7]);
        assert!(
            served.result.as_ref().err().is_none_or(|e| e != "timed out"),
            "a connection hung: {data:?}"
        );
    });
});
