//! `mcp:call`: one MCP `tools/call` of a job, on a connection followed at L7. The
//! resource is the connection's `Target`; the context is the tool's name, its arguments
//! as a Cedar record (`context.arguments.table == "users"`), and whether the tool
//! changed within the session since the job first saw it (the rug-pull case).
//!
//! A tool's arguments are whatever its server declares, so the schema cannot name them:
//! `context.arguments` is declared as an empty record, and the validator's "attribute
//! not found" errors on `context.arguments.…` are the only ones [`crate::load`] lets
//! pass. At run time an argument the call lacks (or of another type) is an evaluation
//! error, which makes that one policy not apply: guard with `has` where that matters.
use cedar_policy::{Context, RestrictedExpression};

use crate::{
    Decision, Effect, Subject,
    eval::{PolicyEngine, string},
};

/// The action.
pub const ACTION: &str = "mcp:call";

/// Why calls pass when no policy names `mcp:call`.
pub const NO_MCP_POLICY_REASON: &str =
    "no policy governs MCP tool calls: allowed on a permitted connection";

/// How deep a call's arguments are made a Cedar value; deeper values are their JSON
/// text (a string).
const MAX_DEPTH: usize = 16;

/// One tool call as policy sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McpCall {
    /// `params.name`.
    pub tool: String,
    /// `params.arguments` (an object; anything else is seen as `{}`).
    pub arguments: serde_json::Map<String, serde_json::Value>,
    /// The tool's name, description or input schema changed within the session.
    pub changed: bool,
}

impl McpCall {
    /// A call of `tool` with `arguments` (a JSON object's text, or "" for none): what
    /// `policy explain` and `policy test` describe a call with.
    pub fn parse(tool: &str, arguments: &str) -> Result<Self, String> {
        let arguments = if arguments.trim().is_empty() {
            serde_json::Map::new()
        } else {
            match serde_json::from_str::<serde_json::Value>(arguments) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(_) => return Err("the arguments must be a JSON object".to_owned()),
                Err(error) => return Err(format!("the arguments are not JSON: {error}")),
            }
        };
        Ok(Self {
            tool: tool.to_owned(),
            arguments,
            changed: false,
        })
    }
}

impl PolicyEngine {
    /// Whether a policy names `mcp:call` (an unconstrained action does not count).
    /// Until one does, calls are allowed on a permitted connection, and MCP is followed
    /// only to targets that declare it.
    pub fn governs_mcp(&self) -> bool {
        self.bundle().names_action(ACTION)
    }

    /// Decides one tool call on the subject's connection.
    pub fn decide_mcp(&self, subject: Subject<'_>, call: &McpCall) -> Decision {
        self.decide_mcp_noting_errors(subject, call).0
    }

    /// Whether `tools/list` shows the job `tool`: unless a call of it is denied whatever
    /// its arguments. It is decided with no arguments: a forbid that applies then hides
    /// it; with no forbid, a permit that reads an argument fails to evaluate, which
    /// means some arguments might be permitted: listed.
    pub fn lists_tool(&self, subject: Subject<'_>, tool: &str, changed: bool) -> bool {
        let call = McpCall {
            tool: tool.to_owned(),
            arguments: serde_json::Map::new(),
            changed,
        };
        let (decision, errored) = self.decide_mcp_noting_errors(subject, &call);
        !decision.blocks()
            || decision.effect != Effect::Deny
            || (decision.policy_ids.is_empty() && errored)
    }

    fn decide_mcp_noting_errors(&self, subject: Subject<'_>, call: &McpCall) -> (Decision, bool) {
        let target = self.target_of(&subject);
        if !self.governs_mcp() {
            return (Decision::allow(NO_MCP_POLICY_REASON).about(target), false);
        }
        let mut errored = false;
        let evaluated = context(call).and_then(|context| {
            let resource = self.resource(subject, target)?;
            let (effect, ids, reason, errors) = self.authorize_noting_errors(
                subject.principal,
                subject.process,
                ACTION,
                resource,
                context,
            )?;
            errored = errors;
            Ok((effect, ids, reason))
        });
        (self.decision(target, evaluated), errored)
    }
}

fn context(call: &McpCall) -> Result<Context, String> {
    Context::from_pairs([
        ("tool".to_owned(), string(&call.tool)),
        ("arguments".to_owned(), record(&call.arguments, 0)?),
        (
            "changed".to_owned(),
            RestrictedExpression::new_bool(call.changed),
        ),
    ])
    .map_err(|e| e.to_string())
}

fn record(
    map: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) -> Result<RestrictedExpression, String> {
    RestrictedExpression::new_record(
        map.iter()
            .filter_map(|(key, value)| Some((key.clone(), value_of(value, depth + 1)?))),
    )
    .map_err(|e| e.to_string())
}

/// A JSON value as Cedar sees it: objects are records, arrays sets, integers Longs, other
/// numbers decimals where Cedar's decimal holds them (else their text), `null` absent.
fn value_of(value: &serde_json::Value, depth: usize) -> Option<RestrictedExpression> {
    use serde_json::Value;
    if depth > MAX_DEPTH && (value.is_object() || value.is_array()) {
        return Some(string(&value.to_string()));
    }
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => string(s),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => decimal(n).unwrap_or_else(|| string(&n.to_string())),
        },
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().filter_map(|v| value_of(v, depth + 1)))
        }
        Value::Object(map) => record(map, depth).ok()?,
    })
}

/// A number as a Cedar decimal (at most 4 fractional digits, within its range).
fn decimal(n: &serde_json::Number) -> Option<RestrictedExpression> {
    let f = n.as_f64()?;
    if !f.is_finite() || f.abs() >= 922_337_203_685_477.0 {
        return None;
    }
    let text = format!("{f:.4}");
    if text.parse::<f64>().ok()? != f {
        return None;
    }
    Some(RestrictedExpression::new_decimal(text))
}

/// Whether a validation error is an access to an attribute of `context.arguments`,
/// which the schema cannot declare.
pub(crate) fn is_argument_access(error: &cedar_policy::ValidationError) -> bool {
    matches!(
        error,
        cedar_policy::ValidationError::UnsafeAttributeAccess(_)
    ) && error.to_string().contains("attribute `arguments.")
}

#[cfg(test)]
mod tests;
