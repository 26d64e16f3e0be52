//! TLS names without terminating TLS: the proxy reads the ClientHello's server name
//! (SNI) from the client's first bytes, without consuming or decrypting anything. A
//! connect is decided with `context.sni`, `resource.hostname` is filled from it only
//! where the name resolves to the destination, and every record carries it. Real curl
//! against a real TLS server that verifies nothing of Tollgate: the bytes pass as sent.
use std::{process::Command, time::Duration};

use tollgate::record::{ConnectionRecord, DecisionLabel};
use tollgate_e2e::{Agent, dns::Upstream, https::HttpsServer, output, require_root, stdout};

const NAMES: [&str; 4] = ["allowed.test", "other.test", "named.test", "elsewhere.test"];

/// A shell line that fetches `https://NAME:PORT/` with curl, verifying the server's
/// certificate, the name resolved by curl itself (`--resolve`, no DNS), and prints
/// `NAME=EXIT`.
fn fetch(server: &HttpsServer, name: &str) -> String {
    format!(
        "curl -sS --max-time 10 --cacert {cert} --resolve {name}:{port}:127.0.0.1 \
         https://{name}:{port}/; echo {name}=$?",
        cert = server.cert.display(),
        port = server.port,
    )
}

/// Runs `lines` in one job; returns its id and stdout.
fn job(agent: &Agent, lines: &[String]) -> (String, String) {
    let script = format!("echo $TOLLGATE_JOB_ID\n{}", lines.join("\n"));
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    let id = text.lines().next().unwrap_or_default().to_owned();
    (id, text)
}

fn exit_of(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no exit status for {name} in {text:?}"))
        .to_owned()
}

fn by_sni<'a>(sessions: &'a [ConnectionRecord], name: &str) -> &'a ConnectionRecord {
    sessions
        .iter()
        .find(|s| s.sni.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no record with sni {name}: {sessions:?}"))
}

const SNI_POLICY: &str = r#"
@id("api-by-name")
permit(principal, action == Action::"connect", resource)
when { context has sni && context.sni == "allowed.test" };
"#;

#[test]
fn a_connect_is_decided_by_the_name_the_client_asks_for() {
    if !require_root() {
        return;
    }
    let server = HttpsServer::start(&NAMES);
    let agent = Agent::start_with_policy("", "", |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("sni.cedar"), SNI_POLICY).expect("policy");
    });
    // The control: the same requests outside a job both succeed.
    for name in ["allowed.test", "other.test"] {
        let out = output(Command::new("sh").args(["-c", &fetch(&server, name)]));
        let text = stdout(&out);
        assert!(text.contains(tollgate_e2e::https::BODY), "{text}");
        assert_eq!(exit_of(&text, name), "0", "direct: {text}");
    }
    let (job_id, text) = job(
        &agent,
        &[fetch(&server, "allowed.test"), fetch(&server, "other.test")],
    );
    // Allowed: the whole TLS session passed untouched (curl verified the server).
    assert_eq!(exit_of(&text, "allowed.test"), "0", "{text}");
    assert_eq!(text.matches(tollgate_e2e::https::BODY).count(), 1, "{text}");
    // Refused: reset during the handshake (curl: SSL connect error).
    assert_ne!(exit_of(&text, "other.test"), "0", "{text}");
    let sessions = agent.wait_sessions(Some(&job_id), 2);
    let allowed = by_sni(&sessions, "allowed.test");
    assert_eq!(allowed.decision, DecisionLabel::Allow, "{allowed:?}");
    assert_eq!(allowed.policy_ids, ["api-by-name"], "{allowed:?}");
    assert!(
        allowed.bytes_down > 1000,
        "the TLS session was relayed: {allowed:?}"
    );
    let other = by_sni(&sessions, "other.test");
    assert_eq!(other.decision, DecisionLabel::Deny, "{other:?}");
    assert_eq!(other.bytes_up, 0, "nothing reached the server: {other:?}");
    // DNS named neither destination, and the client's claim is not a host name.
    assert_eq!(allowed.hostname, None, "{allowed:?}");

    // A client that does not open with TLS has no name: refused, and decided at once
    // on its first bytes, not after the wait for a ClientHello.
    let plain = format!(
        "curl -sS --max-time 10 -o /dev/null http://127.0.0.1:{}/; echo plain=$?",
        server.port
    );
    let started = std::time::Instant::now();
    let (_, text) = job(&agent, &[plain]);
    assert_ne!(exit_of(&text, "plain"), "0", "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a plain request waited {:?}",
        started.elapsed()
    );
}

const HOSTNAME_POLICY: &str = r#"
@id("named-hosts")
permit(principal, action == Action::"connect", resource)
when { resource.hostname == "named.test" || resource.hostname == "elsewhere.test" };
"#;

#[test]
fn the_host_name_comes_from_the_client_hello_only_where_dns_agrees() {
    if !require_root() {
        return;
    }
    let server = HttpsServer::start(&NAMES);
    // named.test is this host; elsewhere.test is another address: a client that asks
    // for it here is not connecting to it.
    let upstream = Upstream::start(&[
        ("named.test", "127.0.0.1"),
        ("elsewhere.test", "10.200.0.1"),
    ]);
    let extra = format!("[dns]\nupstreams = [\"127.0.0.1:{}\"]\n", upstream.port);
    let agent = Agent::start_with_policy("", &extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("hosts.cedar"), HOSTNAME_POLICY).expect("policy");
    });
    let (job_id, text) = job(
        &agent,
        &[
            fetch(&server, "named.test"),
            fetch(&server, "elsewhere.test"),
        ],
    );
    assert_eq!(exit_of(&text, "named.test"), "0", "{text}");
    assert_ne!(exit_of(&text, "elsewhere.test"), "0", "{text}");
    let sessions = agent.wait_sessions(Some(&job_id), 2);
    let named = by_sni(&sessions, "named.test");
    assert_eq!(named.decision, DecisionLabel::Allow, "{named:?}");
    assert_eq!(named.hostname.as_deref(), Some("named.test"), "{named:?}");
    let spoofed = by_sni(&sessions, "elsewhere.test");
    assert_eq!(spoofed.decision, DecisionLabel::Deny, "{spoofed:?}");
    assert_eq!(spoofed.hostname, None, "{spoofed:?}");
}

#[test]
fn every_tls_connection_is_recorded_with_its_name() {
    if !require_root() {
        return;
    }
    let server = HttpsServer::start(&NAMES);
    // No policy reads the name: it is seen after the decision, as the proxy follows the
    // connection, and recorded.
    let agent = Agent::start_with_proxy("kernel_verdicts = false");
    let (job_id, text) = job(
        &agent,
        &[fetch(&server, "allowed.test"), fetch(&server, "other.test")],
    );
    assert_eq!(exit_of(&text, "allowed.test"), "0", "{text}");
    assert_eq!(exit_of(&text, "other.test"), "0", "{text}");
    let sessions = agent.wait_sessions(Some(&job_id), 2);
    for name in ["allowed.test", "other.test"] {
        let s = by_sni(&sessions, name);
        assert_eq!(s.decision, DecisionLabel::Allow, "{s:?}");
        assert!(s.bytes_down > 1000, "{s:?}");
    }
}
