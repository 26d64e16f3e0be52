//! An HTTP request that needs approval (`@approval("required")` on a permit of
//! `http:request`) is held inside the client's own request: the server sees nothing
//! until a reviewer approves; denied, the client gets a 403 naming the reason, on the
//! same connection.
use std::thread;

use tollgate_e2e::{Agent, http::HttpServers, output, require_root, stderr, stdout};

use super::{approvals_cli, wait_pending};

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("reads")
permit(principal, action == Action::"http:request", resource)
when { context.method == "GET" };
@id("deletes-need-approval")
@approval("required")
permit(principal, action == Action::"http:request", resource)
when { context.method == "DELETE" };
"#;

#[test]
fn a_held_http_request_reaches_the_server_only_once_approved() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = Agent::start_with_policy("", "[approvals]\ntimeout = \"30s\"\n", |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("http.cedar"), POLICY).expect("policy");
    });
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", servers.h1);
    let delete = |agent: &Agent, path: &str| {
        let mut command = agent.run_command(
            &[("repository", "acme/api")],
            &[
                "curl",
                "-sS",
                "--max-time",
                "60",
                "-X",
                "DELETE",
                "-w",
                " %{http_code}",
                &url(path),
            ],
        );
        thread::spawn(move || output(&mut command))
    };

    let approved = delete(&agent, "/v1/projects/7");
    let request = wait_pending(&agent);
    assert_eq!(request.action, "http:request");
    assert_eq!(request.policy_ids, ["deletes-need-approval"]);
    assert_eq!(
        request.sql.as_deref(),
        Some("DELETE http://127.0.0.1/v1/projects/7")
    );
    assert!(
        approvals_cli(&agent, &["approve", &request.id])
            .status
            .success()
    );
    let out = approved.join().expect("curl");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.ends_with(" 200"), "{text}");
    assert!(
        text.contains("\"method\":\"DELETE\""),
        "the server saw it: {text}"
    );

    let denied = delete(&agent, "/v1/projects/8");
    let request = wait_pending(&agent);
    let out = approvals_cli(&agent, &["deny", &request.id, "--reason", "not today"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = denied.join().expect("curl");
    let text = stdout(&out);
    assert!(text.ends_with(" 403"), "{text}");
    assert!(text.contains("not today"), "the reviewer's reason: {text}");

    let sessions = agent.wait_sessions(None, 2);
    let statements: Vec<_> = sessions.iter().flat_map(|s| agent.statements(s)).collect();
    assert_eq!(statements.len(), 2, "{statements:?}");
    assert!(
        statements.iter().all(|s| s.approval.is_some()),
        "each request links its approval: {statements:?}"
    );
}
