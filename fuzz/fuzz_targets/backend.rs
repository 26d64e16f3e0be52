//! Server bytes as the proxy reads them: framed tagged messages, each parsed, and the
//! SASL mechanism lists and command tags inside them. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_pgwire::{backend, tagged_len};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(len)) = tagged_len(rest, MAX) {
        assert!(len >= 5 && len <= rest.len());
        match backend::parse(&rest[..len]) {
            Ok(backend::Message::Authentication { data, .. }) => {
                let _ = backend::sasl_mechanisms(data);
            }
            Ok(backend::Message::CommandComplete(tag)) => {
                let _ = backend::rows_of(tag);
            }
            _ => {}
        }
        rest = &rest[len..];
    }
});
