//! Who may decide requests over the control socket: `approvals.reviewers` by uid, gid,
//! user or group (the caller's supplementary groups count), and root.
use nix::unistd::{Group, Uid, User};

use super::ApprovalError;
use crate::{config::ReviewerSpec, jobs::Caller};

/// A reviewer, as recorded: a login name, or `uid:N` when the uid has none.
pub type Reviewer = String;

pub(super) struct Reviewers {
    uids: Vec<u32>,
    gids: Vec<u32>,
}

impl Reviewers {
    /// Names are resolved now; one that does not resolve is logged and matches nobody.
    pub(super) fn new(specs: &[ReviewerSpec]) -> Self {
        let (mut uids, mut gids) = (Vec::new(), Vec::new());
        for spec in specs {
            match spec {
                ReviewerSpec::Uid(uid) => uids.push(*uid),
                ReviewerSpec::Gid(gid) => gids.push(*gid),
                ReviewerSpec::User(name) => match User::from_name(name) {
                    Ok(Some(user)) => uids.push(user.uid.as_raw()),
                    _ => tracing::warn!(reviewer = %spec, "approvals.reviewers: no such user"),
                },
                ReviewerSpec::Group(name) => match Group::from_name(name) {
                    Ok(Some(group)) => gids.push(group.gid.as_raw()),
                    _ => tracing::warn!(reviewer = %spec, "approvals.reviewers: no such group"),
                },
            }
        }
        Self { uids, gids }
    }

    /// The caller's login if it may decide.
    pub(super) fn authorize(&self, caller: Caller) -> Result<Reviewer, ApprovalError> {
        let allowed = caller.uid == 0
            || self.uids.contains(&caller.uid)
            || self.gids.contains(&caller.gid)
            || groups_of(caller.pid).iter().any(|g| self.gids.contains(g));
        if !allowed {
            return Err(ApprovalError::NotReviewer(caller.uid));
        }
        Ok(login(caller.uid))
    }
}

/// The login name of `uid`, or `uid:N`.
pub(super) fn login(uid: u32) -> Reviewer {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => format!("uid:{uid}"),
    }
}

/// The supplementary groups of a process (from /proc; empty if it is gone).
fn groups_of(pid: u32) -> Vec<u32> {
    crate::proc_info::status_field(&pid.to_string(), "Groups")
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_listed_uids_may_decide_others_may_not() {
        let reviewers = Reviewers::new(&[ReviewerSpec::Uid(4242), ReviewerSpec::Gid(4343)]);
        let caller = |uid, gid| Caller { pid: 0, uid, gid };
        assert!(reviewers.authorize(caller(0, 0)).is_ok());
        assert!(reviewers.authorize(caller(4242, 1)).is_ok());
        assert!(reviewers.authorize(caller(5000, 4343)).is_ok());
        assert!(matches!(
            reviewers.authorize(caller(5000, 5000)),
            Err(ApprovalError::NotReviewer(5000))
        ));
    }
}
