//! Which waiting entry of a client tuple a connection the proxy accepted is.
//!
//! A tuple has more than one entry only when a client reused its port (TIME_WAIT reuse
//! on loopback) while the proxy had yet to accept an earlier connection from it: on a
//! slow host whose proxy lags by more than the client's FIN timeout. The listener holds
//! at most one connection per tuple, so a newer connection's SYN resets the one that
//! held it (which is then accepted dead, before the newer one) or finds nothing there
//! (the older one's handshake was lost on a full accept queue: an orphan entry that no
//! accept will ever claim). The kernel's marks on the entries (`PENDING_*`) and whether
//! the accepted socket is alive tell them apart; what they cannot tell apart is
//! refused, never guessed: a connection is never given another one's job.
use tollgate_common::{
    ConnInfo, PENDING_ACKED, PENDING_ESTABLISHED, PENDING_SUPERSEDED, PendingConn, PendingKey,
};

/// What taking an accepted connection's entry found.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// The only entry of its tuple.
    Found(ConnInfo),
    /// Chosen among several entries of its tuple; `orphans` of them were removed.
    Chosen { info: ConnInfo, orphans: usize },
    /// No entry for its tuple.
    None,
    /// Several entries, and none is certainly this connection's.
    Ambiguous { entries: usize },
}

/// Which entry to take, and which entries are orphans to remove.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Choice {
    pub take: Result<PendingKey, usize>,
    pub orphans: Vec<PendingKey>,
}

fn has(entry: &PendingConn, flag: u32) -> bool {
    entry.flags & flag != 0
}

/// Chooses among the entries of one tuple for an accepted connection that is `alive`
/// (not reset). `Err(n)`: none can be chosen (`n` entries).
pub(super) fn choose(entries: &[(PendingKey, PendingConn)], alive: bool) -> Choice {
    let none = |n| Choice {
        take: Err(n),
        orphans: Vec::new(),
    };
    match entries {
        [] => return none(0),
        [(key, _)] => {
            return Choice {
                take: Ok(*key),
                orphans: Vec::new(),
            };
        }
        _ => {}
    }
    let established = |e: &&(PendingKey, PendingConn)| has(&e.1, PENDING_ESTABLISHED);
    if alive {
        // The connection whose handshake completed last holds the tuple at the listener:
        // the one established entry no later handshake superseded.
        let mut current = entries
            .iter()
            .filter(established)
            .filter(|(_, e)| !has(e, PENDING_SUPERSEDED));
        let (Some((key, chosen)), None) = (current.next(), current.next()) else {
            return none(entries.len());
        };
        // Superseded entries older than it: their dead connections were accepted
        // before it (the accept queue is first in, first out), so what is left of them
        // are orphans.
        let orphans = entries
            .iter()
            .filter(|(k, e)| {
                k != key && has(e, PENDING_SUPERSEDED) && e.info.ktime_ns < chosen.info.ktime_ns
            })
            .map(|(k, _)| *k)
            .collect();
        return Choice {
            take: Ok(*key),
            orphans,
        };
    }
    // A dead connection: the oldest one the listener made a connection of. A superseded
    // entry whose FIN the listener never acknowledged may be an orphan: not a candidate.
    let oldest = entries
        .iter()
        .filter(established)
        .filter(|(_, e)| !has(e, PENDING_SUPERSEDED) || has(e, PENDING_ACKED))
        .min_by_key(|(_, e)| e.info.ktime_ns);
    match oldest {
        Some((key, _)) => Choice {
            take: Ok(*key),
            orphans: Vec::new(),
        },
        None => none(entries.len()),
    }
}

#[cfg(test)]
mod tests {
    use tollgate_common::{PENDING_SHARED, TupleKey};

    use super::*;

    const EST: u32 = PENDING_SHARED | PENDING_ESTABLISHED;
    const SUP: u32 = EST | PENDING_SUPERSEDED;

    fn entry(slot: u32, ktime_ns: u64, flags: u32) -> (PendingKey, PendingConn) {
        let tuple = TupleKey {
            family: 2,
            port: 40_000,
            ip: [0x0100_007f, 0, 0, 0],
        };
        let info = ConnInfo {
            ktime_ns,
            cookie: u64::from(slot) + 100,
            ..ConnInfo::default()
        };
        (
            PendingKey { tuple, slot },
            PendingConn {
                info,
                flags,
                _pad: 0,
            },
        )
    }

    fn taken(entries: &[(PendingKey, PendingConn)], alive: bool) -> Result<u32, usize> {
        choose(entries, alive).take.map(|k| k.slot)
    }

    #[test]
    fn one_entry_is_taken_whatever_its_marks() {
        for flags in [0, EST, SUP, PENDING_SHARED] {
            for alive in [true, false] {
                assert_eq!(taken(&[entry(2, 5, flags)], alive), Ok(2));
            }
        }
        assert_eq!(taken(&[], true), Err(0));
    }

    #[test]
    fn a_port_reused_while_the_first_connection_waited() {
        // The first connection's client closed (its FIN acknowledged by the listener),
        // the second's SYN reset it and the second was established. The first is
        // accepted dead, then the second alive.
        let first = entry(0, 10, SUP | PENDING_ACKED);
        let second = entry(1, 20, EST);
        assert_eq!(taken(&[first, second], false), Ok(0));
        assert_eq!(taken(&[second], true), Ok(1));
        // Before the second's SYN arrived, the first was alive and the only one
        // established: it is the first.
        let waiting = entry(1, 20, PENDING_SHARED);
        assert_eq!(taken(&[entry(0, 10, EST), waiting], true), Ok(0));
    }

    #[test]
    fn an_orphan_is_never_given_the_newer_connection() {
        // The first's handshake was lost on a full accept queue: its client thought it
        // established, the listener never acknowledged its FIN, and the port was reused.
        let orphan = entry(0, 10, SUP);
        let second = entry(1, 20, EST);
        let choice = choose(&[orphan, second], true);
        assert_eq!(choice.take.map(|k| k.slot), Ok(1));
        assert_eq!(choice.orphans, vec![orphan.0]);
        // The second reset by its own client (an abortive close), accepted dead.
        assert_eq!(taken(&[orphan, entry(1, 20, EST)], false), Ok(1));
        // The second's connection reset by a third's SYN, accepted dead: the orphan is
        // passed over for the one whose FIN the listener acknowledged.
        let second = entry(1, 20, SUP | PENDING_ACKED);
        let third = entry(2, 30, EST);
        assert_eq!(taken(&[orphan, second, third], false), Ok(1));
    }

    #[test]
    fn what_cannot_be_told_apart_is_refused() {
        // Dead, and every candidate may be an orphan.
        let a = entry(0, 10, SUP);
        let b = entry(1, 20, SUP);
        assert_eq!(taken(&[a, b, entry(2, 30, PENDING_SHARED)], false), Err(3));
        // Alive, and no entry holds the tuple (none established).
        let waiting = entry(1, 20, PENDING_SHARED);
        assert_eq!(
            taken(&[entry(0, 10, PENDING_SHARED), waiting], true),
            Err(2)
        );
        // Alive, and two claim it (the kernel's marks make this impossible).
        assert_eq!(taken(&[entry(0, 10, EST), entry(1, 20, EST)], true), Err(2));
    }

    #[test]
    fn the_choice_does_not_depend_on_slot_order() {
        let orphan = entry(3, 10, SUP);
        let current = entry(0, 20, EST);
        assert_eq!(taken(&[current, orphan], true), Ok(0));
        let dead = entry(2, 5, SUP | PENDING_ACKED);
        assert_eq!(taken(&[current, orphan, dead], false), Ok(2));
    }
}
