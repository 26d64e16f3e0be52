use super::*;
use crate::{Effect, Mode, Principal, Process, load::PolicyBundle, targets::Catalog};

fn engine(policy: &str) -> PolicyEngine {
    let bundle: PolicyBundle = crate::load::load(&[crate::load::Source {
        name: "mcp.cedar".to_owned(),
        text: policy.to_owned(),
    }])
    .expect("policy loads");
    PolicyEngine::new(
        bundle,
        Catalog::new(Vec::new()).expect("catalog"),
        Mode::Enforce,
    )
}

fn with<T>(f: impl FnOnce(Subject<'_>) -> T) -> T {
    let principal = Principal {
        job_id: "j1".to_owned(),
        labels: [("repository".to_owned(), "acme/api".to_owned())].into(),
        ..Principal::default()
    };
    let process = Process::default();
    f(Subject::new(
        &principal,
        &process,
        "127.0.0.1:8000".parse().unwrap(),
    ))
}

fn decide(engine: &PolicyEngine, tool: &str, arguments: &str) -> Decision {
    let call = McpCall::parse(tool, arguments).unwrap();
    with(|subject| engine.decide_mcp(subject, &call))
}

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("tools")
permit(principal, action == Action::"mcp:call", resource)
when { ["echo", "query", "add"].contains(context.tool) };
@id("query-not-users")
forbid(principal, action == Action::"mcp:call", resource)
when { context.tool == "query" && context.arguments.table == "users" };
@id("small-adds")
forbid(principal, action == Action::"mcp:call", resource)
when { context.tool == "add" && context.arguments has a && context.arguments.a > 1000 };
@id("nested")
forbid(principal, action == Action::"mcp:call", resource)
when { context.arguments has options && context.arguments.options.dangerous == true };
@id("reviewed")
@approval("required")
permit(principal, action == Action::"mcp:call", resource)
when { context.tool == "deploy" };
@id("rug-pull")
forbid(principal, action == Action::"mcp:call", resource)
when { context.changed };
"#;

#[test]
fn calls_are_decided_by_tool_and_arguments() {
    let engine = engine(POLICY);
    assert!(engine.governs_mcp());
    let echo = decide(&engine, "echo", r#"{"text": "hello"}"#);
    assert_eq!(echo.effect, Effect::Allow, "{}", echo.reason);
    assert_eq!(echo.policy_ids, ["tools"]);
    let other = decide(&engine, "drop_table", "{}");
    assert_eq!(other.effect, Effect::Deny);
    assert!(other.policy_ids.is_empty(), "{other:?}");
    // An argument-based forbid, and its allowed control.
    let users = decide(&engine, "query", r#"{"table": "users"}"#);
    assert_eq!(users.effect, Effect::Deny);
    assert_eq!(users.policy_ids, ["query-not-users"]);
    let orders = decide(&engine, "query", r#"{"table": "orders", "limit": 5}"#);
    assert_eq!(orders.effect, Effect::Allow, "{}", orders.reason);
    // A call without the argument: the forbid reading it does not apply.
    let bare = decide(&engine, "query", "{}");
    assert_eq!(bare.effect, Effect::Allow, "{}", bare.reason);
    // Numbers are Longs; nested objects records.
    assert_eq!(
        decide(&engine, "add", r#"{"a": 5000, "b": 1}"#).effect,
        Effect::Deny
    );
    assert_eq!(
        decide(&engine, "add", r#"{"a": 5, "b": 1}"#).effect,
        Effect::Allow
    );
    let nested = decide(&engine, "echo", r#"{"options": {"dangerous": true}}"#);
    assert_eq!(nested.policy_ids, ["nested"]);
    let safe = decide(
        &engine,
        "echo",
        r#"{"options": {"dangerous": false}, "x": null}"#,
    );
    assert_eq!(safe.effect, Effect::Allow, "{}", safe.reason);
    // Approval.
    assert_eq!(
        decide(&engine, "deploy", "{}").effect,
        Effect::RequireApproval
    );
}

#[test]
fn a_changed_tool_is_in_the_context() {
    let engine = engine(POLICY);
    let mut call = McpCall::parse("echo", "{}").unwrap();
    call.changed = true;
    let decision = with(|subject| engine.decide_mcp(subject, &call));
    assert_eq!(decision.effect, Effect::Deny);
    assert_eq!(decision.policy_ids, ["rug-pull"]);
}

#[test]
fn tools_list_hides_only_tools_no_call_of_which_is_permitted() {
    let engine = engine(POLICY);
    with(|subject| {
        assert!(engine.lists_tool(subject, "echo", false));
        assert!(engine.lists_tool(subject, "query", false));
        assert!(engine.lists_tool(subject, "deploy", false));
        assert!(!engine.lists_tool(subject, "drop_table", false));
        // Forbidden outright once changed.
        assert!(!engine.lists_tool(subject, "echo", true));
    });
    // A permit that depends on an argument: the tool may be called with some.
    let engine = engine_with_argument_permit();
    with(|subject| {
        assert!(engine.lists_tool(subject, "read_file", false));
        assert!(!engine.lists_tool(subject, "write_file", false));
    });
}

fn engine_with_argument_permit() -> PolicyEngine {
    engine(
        r#"
permit(principal, action == Action::"mcp:call", resource)
when { context.tool == "read_file" && context.arguments.path like "/srv/*" };
"#,
    )
}

#[test]
fn without_an_mcp_policy_calls_pass() {
    let engine = engine(r#"permit(principal, action == Action::"connect", resource);"#);
    assert!(!engine.governs_mcp());
    let decision = decide(&engine, "anything", "{}");
    assert_eq!(decision.effect, Effect::Allow);
    assert_eq!(decision.reason, NO_MCP_POLICY_REASON);
}

#[test]
fn only_argument_accesses_escape_validation() {
    // A misspelt context attribute is still an error at load.
    let error = crate::load::load(&[crate::load::Source {
        name: "bad.cedar".to_owned(),
        text: r#"permit(principal, action == Action::"mcp:call", resource)
when { context.tools == "x" };"#
            .to_owned(),
    }])
    .unwrap_err();
    assert!(error.to_string().contains("tools"), "{error}");
    // So is a wrong type outside the arguments.
    assert!(
        crate::load::load(&[crate::load::Source {
            name: "bad.cedar".to_owned(),
            text: r#"permit(principal, action == Action::"mcp:call", resource)
when { context.tool > 3 };"#
                .to_owned(),
        }])
        .is_err()
    );
}

#[test]
fn arguments_parse_as_an_object_only() {
    assert!(McpCall::parse("t", "[1]").is_err());
    assert!(McpCall::parse("t", "{").is_err());
    assert!(McpCall::parse("t", "").unwrap().arguments.is_empty());
    // Deep and odd values still make a context.
    let deep = format!("{}1{}", r#"{"a":"#.repeat(40), "}".repeat(40));
    let call = McpCall::parse("t", &deep).unwrap();
    assert!(context(&call).is_ok());
    let odd = McpCall::parse(
        "t",
        r#"{"f": 1.5, "big": 1e300, "u": 18446744073709551615, "s": [1, "x"]}"#,
    )
    .unwrap();
    assert!(context(&odd).is_ok());
}
