//! What a followed HTTP connection carries besides requests: an upgrade the server
//! accepts (101) and a CONNECT tunnel, relayed as bytes once decided, and the end of a
//! keep-alive connection the server closes when idle. Each as directly.
use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, http::HttpServers, require_root};

use super::{POLICY, agent, agent_with, requests, sh};

/// Upgrades to `echo` on `port`, then sends `ping` and prints what came back.
const UPGRADE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
s.sendall(b"GET /stream HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print(head.split(b"\r\n")[0].decode())
s.sendall(b"ping over the upgraded connection")
got = b""
while len(got) < 33:
    got += s.recv(100)
print(got.decode())
"#;

#[test]
fn an_upgrade_the_server_accepts_is_relayed_after_its_request_is_decided() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = agent();
    let port = servers.h1.to_string();
    let direct = sh(None, &format!("python3 -c '{UPGRADE_CLIENT}' {port}"));
    assert_eq!(
        direct,
        "HTTP/1.1 101 Switching Protocols\nping over the upgraded connection\n"
    );
    let text = sh(
        Some(&agent),
        &format!("echo $TOLLGATE_JOB_ID; python3 -c '{UPGRADE_CLIENT}' {port}"),
    );
    let (job_id, rest) = text.split_once('\n').expect("the job id");
    assert_eq!(rest, direct, "the same as directly");
    let sessions = agent.wait_sessions(Some(job_id), 1);
    let statements = agent.wait_statement_records(&sessions[0], 1);
    assert_eq!(
        requests(&statements),
        [("GET", "/stream", Some(101), DecisionLabel::Allow)]
    );
}

/// One request (Node answers it chunked), then idle past the server's keep-alive
/// timeout (Node's: 5 s): prints the status line and what a read gets then (`closed` at
/// EOF).
const IDLE_CLIENT: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(15)
s.sendall(b"GET /v1/idle HTTP/1.1\r\nHost: h\r\n\r\n")
data = b""
while not data.endswith(b"0\r\n\r\n"):
    data += s.recv(4096)
print(data.split(b"\r\n")[0].decode())
time.sleep(6.5)
got = s.recv(100)
print("closed" if got == b"" else "open " + repr(got))
"#;

#[test]
fn a_connection_the_server_closes_when_idle_is_closed_for_the_client_too() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let agent = agent();
    let port = servers.h1.to_string();
    let direct = sh(None, &format!("python3 -c '{IDLE_CLIENT}' {port}"));
    assert_eq!(direct, "HTTP/1.1 200 OK\nclosed\n");
    let in_job = sh(Some(&agent), &format!("python3 -c '{IDLE_CLIENT}' {port}"));
    assert_eq!(
        in_job, direct,
        "the client's connection ends with the server's"
    );
}

/// A CONNECT to `sys.argv[2]` through the server, then a line through the tunnel:
/// prints the status line and what came back.
const CONNECT_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(15)
s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (sys.argv[2].encode(), sys.argv[2].encode()))
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
status = head.split(b"\r\n")[0].decode()
print(status)
if " 200 " in status:
    s.sendall(b"ping over the tunnel")
    got = b""
    while len(got) < 20:
        got += s.recv(100)
    print(got.decode())
"#;

#[test]
fn a_connect_tunnel_is_decided_and_relayed() {
    if !require_root() {
        return;
    }
    let servers = HttpServers::start();
    let policy = format!(
        "{POLICY}\n@id(\"tunnels\")\npermit(principal, action == Action::\"http:request\", resource)\n\
         when {{ context.method == \"CONNECT\" && context.host == \"tunnel.internal\" }};\n"
    );
    let agent = agent_with(&policy, "[http]\nheaders = [\"x-ci-run\"]\n");
    let port = servers.h1.to_string();
    let run = |agent: Option<&Agent>, to: &str| {
        sh(agent, &format!("python3 -c '{CONNECT_CLIENT}' {port} {to}"))
    };
    let direct = run(None, "tunnel.internal:443");
    assert_eq!(
        direct,
        "HTTP/1.1 200 Connection Established\nping over the tunnel\n"
    );
    assert_eq!(
        run(Some(&agent), "tunnel.internal:443"),
        direct,
        "the same as directly"
    );
    // Another host: refused by default (directly, the server would tunnel it too).
    assert_eq!(run(None, "elsewhere.internal:443"), direct);
    let refused = run(Some(&agent), "elsewhere.internal:443");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
}
