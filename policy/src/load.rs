//! Loading policy files: parse each file, give every policy a stable id, validate the set
//! against the schema, and report each problem as `file:line:col: message`.
use std::{collections::HashSet, str::FromStr as _};

use cedar_policy::{PolicyId, PolicySet, ValidationMode, Validator};
use miette::Diagnostic as _;

/// The text of one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Shown in errors and used in default policy ids (usually the file's path).
    pub name: String,
    pub text: String,
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found while loading a policy set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadErrors(pub Vec<PolicyError>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// A validated policy set.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub(crate) set: PolicySet,
    /// Ids of the policies, in file order.
    pub ids: Vec<String>,
    /// Where each policy came from: (id, file).
    pub origins: Vec<(String, String)>,
}

impl PolicyBundle {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether any policy can apply to SQL statements: its action scope is any action
    /// or names an `sql:` action.
    pub fn governs_sql(&self) -> bool {
        self.set
            .policies()
            .any(|policy| match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => true,
                cedar_policy::ActionConstraint::Eq(uid) => is_sql(&uid),
                cedar_policy::ActionConstraint::In(uids) => uids.iter().any(is_sql),
            })
    }

    /// Whether any policy names `dns:query` (an unconstrained action does not count:
    /// DNS is decided once a policy says how).
    pub fn governs_dns(&self) -> bool {
        self.names_action("dns:query")
    }

    /// Whether any policy names `action` in its scope (an unconstrained action does not
    /// count).
    pub fn names_action(&self, action: &str) -> bool {
        let is = |uid: &cedar_policy::EntityUid| uid.id().unescaped() == action;
        self.set
            .policies()
            .any(|policy| match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => false,
                cedar_policy::ActionConstraint::Eq(uid) => is(&uid),
                cedar_policy::ActionConstraint::In(uids) => uids.iter().any(is),
            })
    }

    /// Whether any permit can apply to `udp:send` (its action scope is any action or
    /// names it). Without one, UDP other than DNS is refused in the kernel.
    pub fn may_permit_udp(&self) -> bool {
        let is_udp = |uid: &cedar_policy::EntityUid| uid.id().unescaped() == crate::udp::ACTION;
        self.set
            .policies()
            .filter(|policy| policy.effect() == cedar_policy::Effect::Permit)
            .any(|policy| match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => true,
                cedar_policy::ActionConstraint::Eq(uid) => is_udp(&uid),
                cedar_policy::ActionConstraint::In(uids) => uids.iter().any(is_udp),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(crate) fn annotation(&self, id: &PolicyId, key: &str) -> Option<&str> {
        self.set.policy(id).and_then(|p| p.annotation(key))
    }
}

/// `once`, `job`, or a duration of whole units (`30m`, `1h30m`, `2d`).
fn valid_approval_scope(scope: &str) -> bool {
    if matches!(scope, "once" | "job") {
        return true;
    }
    let mut digits = false;
    let mut units = 0;
    for c in scope.chars() {
        match c {
            '0'..='9' => digits = true,
            's' | 'm' | 'h' | 'd' if digits => {
                digits = false;
                units += 1;
            }
            _ => return false,
        }
    }
    !digits && units > 0
}

/// The 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

fn error_at(source: &Source, offset: Option<usize>, message: String) -> PolicyError {
    let (line, column) = offset.map_or((1, 1), |o| line_col(&source.text, o));
    PolicyError {
        file: source.name.clone(),
        line,
        column,
        message,
    }
}

/// The base name of a source, for default policy ids.
fn short_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// Parses and validates `sources` as one policy set, against the schema with no HTTP
/// headers configured.
pub fn load(sources: &[Source]) -> Result<PolicyBundle, LoadErrors> {
    load_with(sources, &[])
}

/// Parses and validates `sources` as one policy set, against the schema whose
/// `context.headers` of `http:request` holds `http_headers` (`[http] headers`).
pub fn load_with(sources: &[Source], http_headers: &[String]) -> Result<PolicyBundle, LoadErrors> {
    let schema = match crate::schema::with_headers(http_headers) {
        Ok(schema) => schema,
        Err(message) => {
            return Err(LoadErrors(vec![PolicyError {
                file: "[http] headers".to_owned(),
                line: 1,
                column: 1,
                message,
            }]));
        }
    };
    let mut errors = Vec::new();
    let mut set = PolicySet::new();
    let mut ids = Vec::new();
    let mut origins: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();

    for source in sources {
        let parsed = match PolicySet::from_str(&source.text) {
            Ok(parsed) => parsed,
            Err(parse_errors) => {
                for error in parse_errors.iter() {
                    let offset = error
                        .labels()
                        .and_then(|mut l| l.next())
                        .map(|l| l.offset());
                    errors.push(error_at(source, offset, error.to_string()));
                }
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            errors.push(error_at(
                source,
                None,
                "policy templates are not supported; write plain policies".to_owned(),
            ));
            continue;
        }
        // Cedar numbers the policies of one parse policy0, policy1, ... in file order.
        let mut policies: Vec<_> = parsed.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (index, policy) in policies.into_iter().enumerate() {
            let id = policy
                .annotation("id")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{}#{index}", short_name(&source.name)));
            let offset = source.text.find(&format!("@id(\"{id}\")"));
            if !seen.insert(id.clone()) {
                errors.push(error_at(
                    source,
                    offset,
                    format!("duplicate policy id `{id}`"),
                ));
                continue;
            }
            if let Some(scope) = policy.annotation(crate::eval::APPROVAL_SCOPE_ANNOTATION)
                && !valid_approval_scope(scope)
            {
                let at = source.text.find("@approval_scope(").or(offset);
                errors.push(error_at(
                    source,
                    at,
                    format!(
                        "policy `{id}`: @approval_scope(\"{scope}\") must be \"once\", \"job\" \
                         or a duration such as \"30m\""
                    ),
                ));
                continue;
            }
            if let Err(error) = set.add(policy.new_id(PolicyId::new(&id))) {
                errors.push(error_at(source, offset, error.to_string()));
                continue;
            }
            origins.push((id.clone(), source.name.clone()));
            ids.push(id);
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }

    // A header that `[http] headers` does not name is never in a request's context: a
    // policy reading it is a mistake (`has` would only ever be false).
    for policy in set.policies() {
        let mut read = Vec::new();
        if let Ok(json) = policy.to_json() {
            crate::http::headers_read(&json, &mut read);
        }
        for name in read.iter().filter(|name| !http_headers.contains(name)) {
            let id = policy.id().to_string();
            let Some(source) = origins
                .iter()
                .find(|(policy, _)| *policy == id)
                .and_then(|(_, file)| sources.iter().find(|s| s.name == *file))
            else {
                continue;
            };
            let offset = source.text.find(&format!("\"{name}\""));
            errors.push(error_at(
                source,
                offset,
                format!(
                    "policy `{id}`: reads context.headers[\"{name}\"], which `[http] headers` \
                     does not name (configured: {http_headers:?}); add it there"
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }

    let result = Validator::new(schema).validate(&set, ValidationMode::Strict);
    for error in result
        .validation_errors()
        .filter(|e| !crate::mcp::is_argument_access(e))
    {
        let id = error.policy_id().to_string();
        let file = origins
            .iter()
            .find(|(policy, _)| *policy == id)
            .map(|(_, file)| file.clone())
            .unwrap_or_default();
        let source = sources.iter().find(|s| s.name == file);
        let offset = error
            .labels()
            .and_then(|mut l| l.next())
            .map(|l| l.offset());
        let message = format!("policy `{id}`: {error}");
        errors.push(match source {
            Some(source) => error_at(source, offset, message),
            None => PolicyError {
                file,
                line: 1,
                column: 1,
                message,
            },
        });
    }
    if !errors.is_empty() {
        return Err(LoadErrors(errors));
    }
    Ok(PolicyBundle { set, ids, origins })
}

fn is_sql(uid: &cedar_policy::EntityUid) -> bool {
    uid.id().unescaped().starts_with("sql:")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.to_owned(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn ids_come_from_annotations_or_file_and_index() {
        let bundle = load(&[src(
            "/etc/tollgate/policies/base.cedar",
            "@id(\"allow-all\")\npermit(principal, action, resource);\n\
             forbid(principal, action == Action::\"connect\", resource) when { resource.port == 22 };",
        )])
        .unwrap();
        assert_eq!(
            bundle.ids,
            vec!["allow-all".to_owned(), "base.cedar#1".to_owned()]
        );
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = load(&[src(
            "p.cedar",
            "permit(principal, action, resource);\n\npermit(principal action, resource);",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("p.cedar:3:"), "{err}");
    }

    #[test]
    fn schema_errors_name_file_line_and_column() {
        let err = load(&[src(
            "q.cedar",
            "permit(principal, action == Action::\"connect\", resource)\n  when { principal.repo == \"x\" };",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("q.cedar:2:"), "{err}");
        assert!(err.contains("repo"), "{err}");
        let err = load(&[src(
            "r.cedar",
            "permit(principal, action == Action::\"fly\", resource);",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("r.cedar:1:"), "{err}");
    }

    #[test]
    fn approval_scopes_are_checked_at_load_with_their_line() {
        let ok = "@id(\"a\")\n@approval(\"required\")\n@approval_scope(\"1h30m\")\n\
                  permit(principal, action, resource);";
        assert!(load(&[src("a.cedar", ok)]).is_ok());
        for scope in ["job", "once", "30m", "2d"] {
            assert!(valid_approval_scope(scope), "{scope}");
        }
        for scope in ["forever", "30", "m", "1.5h", ""] {
            assert!(!valid_approval_scope(scope), "{scope}");
        }
        let bad = "permit(principal, action, resource);\n@id(\"b\")\n@approval(\"required\")\n\
                   @approval_scope(\"forever\")\npermit(principal, action, resource);";
        let err = load(&[src("b.cedar", bad)]).unwrap_err().to_string();
        assert!(err.starts_with("b.cedar:4:"), "{err}");
        assert!(err.contains("approval_scope"), "{err}");
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let p = "@id(\"same\")\npermit(principal, action, resource);";
        let err = load(&[src("a.cedar", p), src("b.cedar", p)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("b.cedar:1:1: duplicate policy id `same`"),
            "{err}"
        );
    }
}
