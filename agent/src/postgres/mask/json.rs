//! Masking of JSON documents (HTTP response bodies, MCP tool calls and results) with the
//! same rules and detectors as PostgreSQL results: a rule's column patterns match object
//! keys (a value under a masked key becomes "****", or null where it is not a string),
//! and the detectors, where they apply, mask what they find inside string values. A
//! rule scoped to databases or tables is about SQL and does not apply here.
use std::borrow::Cow;

use serde_json::Value;

use super::{MaskingConfig, Scope};

/// What replaces a value under a masked key.
const MASKED: &str = "****";

impl MaskingConfig {
    /// Masks `value` in place for the target named `target`: by key rules, and by the
    /// detectors when `detect`. Returns how many values changed.
    pub fn mask_json(&self, value: &mut Value, target: &str, detect: bool) -> usize {
        if !self.enabled {
            return 0;
        }
        let scope = Scope {
            target,
            database: "",
        };
        let keyed = self
            .rules
            .iter()
            .any(|r| r.databases.is_empty() && r.tables.is_empty());
        let mut changed = 0;
        self.walk(value, &scope, keyed, detect, &mut changed);
        changed
    }

    fn walk(
        &self,
        value: &mut Value,
        scope: &Scope<'_>,
        keyed: bool,
        detect: bool,
        changed: &mut usize,
    ) {
        match value {
            Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if keyed && self.masks_column(scope, &[], key) && !is_masked(inner) {
                        *inner = match inner {
                            Value::Null => Value::Null,
                            Value::String(_) => Value::String(MASKED.to_owned()),
                            _ => Value::Null,
                        };
                        *changed += 1;
                    } else {
                        self.walk(inner, scope, keyed, detect, changed);
                    }
                }
            }
            Value::Array(items) => {
                for inner in items {
                    self.walk(inner, scope, keyed, detect, changed);
                }
            }
            Value::String(text) if detect => {
                if let Cow::Owned(masked) = self.redact(text) {
                    *text = masked;
                    *changed += 1;
                }
            }
            _ => {}
        }
    }
}

fn is_masked(value: &Value) -> bool {
    value.is_null() || value.as_str() == Some(MASKED)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::postgres::mask::ColumnRule;

    #[test]
    fn keys_by_rule_and_strings_by_detector() {
        let config = MaskingConfig {
            rules: vec![
                ColumnRule {
                    columns: vec!["*password*".to_owned(), "ssn".to_owned()],
                    targets: Vec::new(),
                    databases: Vec::new(),
                    tables: Vec::new(),
                },
                ColumnRule {
                    columns: vec!["city".to_owned()],
                    targets: Vec::new(),
                    databases: vec!["shop".to_owned()],
                    tables: Vec::new(),
                },
            ],
            ..MaskingConfig::default()
        };
        let mut doc = json!({
            "user": {"name": "Ann", "email": "ann@example.com", "ssn": 123456789, "db_password": "hunter2", "city": "Oslo"},
            "content": [{"type": "text", "text": "card 4111 1111 1111 1111 and id 42"}],
            "count": 4111111111111111u64,
        });
        let mut rules_only = doc.clone();
        assert_eq!(config.mask_json(&mut rules_only, "api", false), 2);
        assert_eq!(rules_only["user"]["ssn"], Value::Null);
        assert_eq!(rules_only["user"]["db_password"], "****");
        assert_eq!(rules_only["user"]["email"], "ann@example.com");
        assert_eq!(
            rules_only["user"]["city"], "Oslo",
            "a rule about a database"
        );
        assert_eq!(config.mask_json(&mut doc, "api", true), 4);
        assert_eq!(doc["user"]["email"], "****@example.com");
        assert_eq!(doc["content"][0]["text"], "card ************1111 and id 42");
        assert_eq!(doc["count"], 4111111111111111u64, "numbers stay");
        assert_eq!(doc["user"]["name"], "Ann");
        let disabled = MaskingConfig {
            enabled: false,
            ..config
        };
        let mut plain = json!({"ssn": "1"});
        assert_eq!(disabled.mask_json(&mut plain, "api", true), 0);
    }
}
