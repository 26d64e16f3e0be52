//! Client bytes as the proxy reads them: a startup-phase message, then framed tagged
//! messages, each parsed. Nothing may panic, and framing must never over-read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_pgwire::{frontend, startup_len, tagged_len};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let _ = tollgate_pgwire::detect(data);
    let mut rest = data;
    if let Ok(Some(len)) = startup_len(rest, MAX) {
        assert!(len <= rest.len());
        let _ = frontend::parse_startup(&rest[..len]);
        rest = &rest[len..];
    }
    while let Ok(Some(len)) = tagged_len(rest, MAX) {
        assert!(len >= 5 && len <= rest.len());
        let _ = frontend::parse(&rest[..len]);
        rest = &rest[len..];
    }
});
