//! Address spellings: every spelling of the local host is loopback before policy, so a
//! policy that forbids a loopback service cannot be passed by `0.0.0.0`, `::`, 127/8 or
//! an IPv4-mapped form.
use std::sync::atomic::Ordering;

use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, require_root, servers::Server, stderr, stdout};

const SPELLINGS: [&str; 7] = [
    "127.0.0.1",
    "0.0.0.0",
    "127.0.0.2",
    "::",
    "::1",
    "::ffff:0.0.0.0",
    "::ffff:127.0.0.1",
];

const FORBID_SECRET: &str = r#"
@id("open")
permit(principal, action == Action::"connect", resource);
@id("no-secret")
forbid(principal, action == Action::"connect", resource) when { resource.name == "secret" };
"#;

/// A python script that connects to each spelling at `port` and prints one line each:
/// the spelling, then `ok` and the first line of the HTTP answer, or the errno.
fn probe(port: u16) -> String {
    format!(
        "import socket\n\
         for host in {SPELLINGS:?}:\n\
         \x20   fam = socket.AF_INET6 if ':' in host else socket.AF_INET\n\
         \x20   s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(5)\n\
         \x20   try:\n\
         \x20       s.connect((host, {port})); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         \x20       data = b''\n\
         \x20       while True:\n\
         \x20           chunk = s.recv(4096)\n\
         \x20           if not chunk: break\n\
         \x20           data += chunk\n\
         \x20       print(host, 'ok' if data.startswith(b'HTTP/1.') else 'empty')\n\
         \x20   except OSError as e:\n\
         \x20       print(host, 'errno', e.errno)\n\
         \x20   finally:\n\
         \x20       s.close()\n"
    )
}

#[test]
fn every_spelling_of_a_forbidden_loopback_service_is_denied() {
    if !require_root() {
        return;
    }
    // Both answer on every spelling: bound to the dual-stack wildcard.
    let secret = Server::http("[::]:0");
    let open = Server::http("[::]:0");
    let targets = format!(
        "[[targets]]\nname = \"secret\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\n",
        secret.port()
    );
    let agent = Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("spellings.cedar"), FORBID_SECRET).expect("policy");
    });

    // Control: outside a job every spelling reaches the secret service.
    let direct = tollgate_e2e::output(
        std::process::Command::new("python3").args(["-c", &probe(secret.port())]),
    );
    let all_ok: String = SPELLINGS.iter().map(|h| format!("{h} ok\n")).collect();
    assert_eq!(stdout(&direct), all_ok, "direct: {}", stderr(&direct));
    let reached_directly = secret.accepted.load(Ordering::Relaxed);
    assert_eq!(reached_directly, SPELLINGS.len());

    // In a job, the open service answers on every spelling (paired allowed case)...
    let allowed = agent.run_job(
        &[("repo", "acme/api")],
        &["python3", "-c", &probe(open.port())],
    );
    assert_eq!(stdout(&allowed), all_ok, "{}", stderr(&allowed));
    // ...and the secret one on none: each is intercepted and denied by the forbid.
    let denied = agent.run_job(
        &[("repo", "acme/api")],
        &["python3", "-c", &probe(secret.port())],
    );
    let out = stdout(&denied);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), SPELLINGS.len(), "{}", stderr(&denied));
    for (line, host) in lines.iter().zip(SPELLINGS) {
        assert!(
            !line.ends_with(" ok"),
            "{host} reached the forbidden service: {line}"
        );
    }
    assert_eq!(
        secret.accepted.load(Ordering::Relaxed),
        reached_directly,
        "nothing from the job reached the secret service"
    );

    let records = agent.wait_sessions(None, 2 * SPELLINGS.len());
    let denials: Vec<_> = records
        .iter()
        .filter(|s| s.decision == DecisionLabel::Deny)
        .collect();
    assert_eq!(denials.len(), SPELLINGS.len(), "{records:?}");
    for s in &denials {
        assert_eq!(s.target.as_deref(), Some("secret"), "{s:?}");
        assert_eq!(
            s.policy_ids.first().map(String::as_str),
            Some("no-secret"),
            "{s:?}"
        );
    }
    assert_eq!(
        records
            .iter()
            .filter(|s| s.decision == DecisionLabel::Allow)
            .count(),
        SPELLINGS.len()
    );
}
