//! Sequences of whole PostgreSQL messages from both sides through the session tracker,
//! as the relay feeds it. The first byte picks result masking by rules (even) or by
//! detection too (odd). Then each step is one byte that says who sends (even: the
//! client, odd: the server) and one framed message. After every fifth step whose byte
//! has bit 1 set the policy is reloaded (write-only when bit 2 is set, else read-write),
//! as a reload lands between two messages. Nothing may panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tollgate::fuzzing::Harness;
use tollgate_pgwire::tagged_len;

const MAX: usize = 1 << 20;
const READ_WRITE: &str = "@id(\"rw\")\npermit(principal, action in \
                          [Action::\"sql:read\", Action::\"sql:write\"], resource);\n";
const WRITE_ONLY: &str =
    "@id(\"w\")\npermit(principal, action == Action::\"sql:write\", resource);\n";

thread_local! {
    /// Built once per process (an enforcer, a recorder thread, a scratch store), with
    /// a fresh tracker for every input.
    static SESSIONS: [RefCell<Harness>; 2] = [false, true].map(|detect| {
        RefCell::new(Harness::new(READ_WRITE, detect).expect("the fuzz harness"))
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    SESSIONS.with(|sessions| {
        let mut session = sessions[usize::from(mode & 1)].borrow_mut();
        session.restart(READ_WRITE).expect("restarting the session");
        run(&mut session, rest);
        let _ = session.unanswered();
    });
});

fn run(session: &mut Harness, mut rest: &[u8]) {
    let mut out = Vec::new();
    let mut step = 0usize;
    while let Some((&who, after)) = rest.split_first() {
        let Ok(Some(len)) = tagged_len(after, MAX) else {
            break;
        };
        let raw = &after[..len];
        out.clear();
        let _ = if who & 1 == 0 {
            session.client(raw, &mut out)
        } else {
            session.server(raw, &mut out)
        };
        step += 1;
        if step % 5 == 0 && who & 2 == 2 {
            let policy = if who & 4 == 4 { WRITE_ONLY } else { READ_WRITE };
            session.reload(policy).expect("reloading the policy");
        }
        let _ = session.finished();
        rest = &after[len..];
    }
}
