//! What a record says was decided: one closed set of labels, stored, printed and counted
//! as the same lowercase words (`allow`, `would_deny`, ...).
use std::{fmt, str::FromStr};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};

/// A record's decision. Policy decisions map onto the first five; the rest are what the
/// agent decided without a policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionLabel {
    Allow,
    /// Refused, by policy or by the agent (a kernel refusal, a connect to the agent).
    Deny,
    RequireApproval,
    /// Audit mode: the policy denies it, the connection went on.
    WouldDeny,
    WouldRequireApproval,
    /// Allowed at first, then ended by a policy reload.
    Revoked,
    /// No job's cgroup, or no kernel record: nothing to decide on. The default until a
    /// decision is made, so a record that never got one fails closed in what it says.
    #[default]
    Unattributed,
    /// Bytes that were not the protocol (a DNS query that does not parse).
    Malformed,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 8] = [
        DecisionLabel::Allow,
        DecisionLabel::Deny,
        DecisionLabel::RequireApproval,
        DecisionLabel::WouldDeny,
        DecisionLabel::WouldRequireApproval,
        DecisionLabel::Revoked,
        DecisionLabel::Unattributed,
        DecisionLabel::Malformed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allow => "allow",
            DecisionLabel::Deny => "deny",
            DecisionLabel::RequireApproval => "require_approval",
            DecisionLabel::WouldDeny => "would_deny",
            DecisionLabel::WouldRequireApproval => "would_require_approval",
            DecisionLabel::Revoked => "revoked",
            DecisionLabel::Unattributed => "unattributed",
            DecisionLabel::Malformed => "malformed",
        }
    }

    /// The statement or connection was refused (not only recorded as one that would be).
    pub const fn refused(self) -> bool {
        matches!(
            self,
            DecisionLabel::Deny | DecisionLabel::RequireApproval | DecisionLabel::Revoked
        )
    }
}

impl From<&tollgate_policy::Decision> for DecisionLabel {
    fn from(decision: &tollgate_policy::Decision) -> Self {
        use tollgate_policy::Effect;
        match (decision.effect, decision.enforced) {
            (Effect::Allow, _) => DecisionLabel::Allow,
            (Effect::Deny, true) => DecisionLabel::Deny,
            (Effect::RequireApproval, true) => DecisionLabel::RequireApproval,
            (Effect::Deny, false) => DecisionLabel::WouldDeny,
            (Effect::RequireApproval, false) => DecisionLabel::WouldRequireApproval,
        }
    }
}

impl fmt::Display for DecisionLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // pad: column widths in the CLI's tables apply.
        f.pad(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown decision label {0:?}")]
pub struct UnknownLabel(String);

impl FromStr for DecisionLabel {
    type Err = UnknownLabel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DecisionLabel::ALL
            .into_iter()
            .find(|label| label.as_str() == s)
            .ok_or_else(|| UnknownLabel(s.to_owned()))
    }
}

impl ToSql for DecisionLabel {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for DecisionLabel {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e: UnknownLabel| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::DecisionLabel;

    #[test]
    fn a_label_reads_back_as_itself_in_every_form() {
        for label in DecisionLabel::ALL {
            assert_eq!(label.as_str().parse::<DecisionLabel>().unwrap(), label);
            let json = serde_json::to_string(&label).unwrap();
            assert_eq!(json, format!("\"{}\"", label.as_str()));
            assert_eq!(format!("{label:<24}|").find('|'), Some(24));
        }
        assert!("permit".parse::<DecisionLabel>().is_err());
    }

    #[test]
    fn a_policy_decision_maps_to_the_label_the_policy_crate_prints() {
        let mut d = tollgate_policy::Decision::deny("x");
        assert_eq!(DecisionLabel::from(&d).as_str(), d.label());
        d.enforced = false;
        assert_eq!(DecisionLabel::from(&d), DecisionLabel::WouldDeny);
        assert_eq!(DecisionLabel::from(&d).as_str(), d.label());
        let a = tollgate_policy::Decision::allow("y");
        assert_eq!(DecisionLabel::from(&a), DecisionLabel::Allow);
        assert!(!DecisionLabel::WouldDeny.refused());
        assert!(DecisionLabel::Revoked.refused());
    }

    #[test]
    fn the_store_rejects_a_label_it_does_not_know() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        let ok: DecisionLabel = db
            .query_row("SELECT ?1", [DecisionLabel::WouldRequireApproval], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(ok, DecisionLabel::WouldRequireApproval);
        let bad = db.query_row("SELECT 'permit'", [], |r| r.get::<_, DecisionLabel>(0));
        assert!(bad.is_err());
    }
}
