//! PostgreSQL with direct TLS (`sslnegotiation=direct`, libpq 17+): a ClientHello with
//! ALPN `postgresql` is followed as PostgreSQL, its TLS terminated with the local CA, and
//! its statements decided and recorded exactly as with an SSLRequest. A PostgreSQL
//! target whose first bytes cannot be followed is refused, never relayed blind.
use std::{path::Path, process::Command};

use serde_json::Value;
use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, output, postgres::postgres17, python, require_root, stderr, stdout};

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);

@id("pg-read-write")
permit(principal, action in [Action::"sql:read", Action::"sql:write"], resource);

@id("no-ddl-in-production")
forbid(principal, action == Action::"sql:ddl", resource)
when { resource.hasTag("env") && resource.getTag("env") == "production" };
"#;

/// An agent whose target for the server has no protocol hint (unless `hint`): direct TLS
/// must be recognised by its ALPN, not by configuration.
fn agent(port: u16, hint: bool) -> Agent {
    let protocol = if hint {
        "protocol = \"postgres\"\n"
    } else {
        ""
    };
    let targets = format!(
        "[[targets]]\nname = \"pg17\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
         {protocol}tags = {{ env = \"production\" }}\n"
    );
    Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), POLICY).expect("policy");
    })
}

fn client(agent: Option<&Agent>, dsn: &str, negotiation: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/direct_tls.py");
    let python = python();
    let args = [
        python.to_str().expect("path"),
        script.to_str().expect("path"),
        dsn,
        negotiation,
        "tollgate_direct_tls",
    ];
    let out = match agent {
        Some(agent) => agent.run_job(&[("repository", "acme/api")], &args),
        None => output(Command::new(args[0]).args(&args[1..])),
    };
    assert!(out.status.success(), "{negotiation}: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

#[test]
fn direct_tls_sessions_are_followed_decided_and_recorded() {
    if !require_root() {
        return;
    }
    let pg = postgres17();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        pg.port
    );
    let agent = agent(pg.port, false);

    // Control: directly, both negotiations reach the server over TLS and DDL runs.
    for negotiation in ["direct", "postgres"] {
        let seen = client(None, &dsn, negotiation);
        assert!(
            seen["libpq"].as_u64().is_some_and(|v| v >= 170000),
            "{seen}"
        );
        assert_eq!(seen["ssl_in_use"], true, "{seen}");
        assert_eq!(seen["ddl"], "allowed", "{seen}");
    }
    // In a job: the same answers, over TLS, but the DDL is denied, with either.
    for negotiation in ["direct", "postgres"] {
        let direct = client(None, &dsn, negotiation);
        let seen = client(Some(&agent), &dsn, negotiation);
        assert_eq!(seen["ssl_in_use"], true, "{negotiation}: {seen}");
        assert_eq!(seen["row"], direct["row"], "{negotiation}");
        assert_eq!(seen["ddl"], "42501", "{negotiation}: {seen}");
        assert_eq!(seen["after"], "after", "{negotiation}: the session goes on");
    }

    let sessions = agent.wait_sessions(None, 2);
    assert_eq!(sessions.len(), 2, "{sessions:#?}");
    for s in &sessions {
        assert_eq!(
            s.protocol.as_deref(),
            Some("postgres"),
            "followed at L7: {s:?}"
        );
        assert_eq!(s.client_tls, Some(true), "{s:?}");
        assert_eq!(s.server_tls, Some(true), "{s:?}");
        assert_eq!(s.target.as_deref(), Some("pg17"));
    }
    let statements = agent.wait_statements(&sessions, 6);
    let denied: Vec<_> = statements
        .iter()
        .filter(|st| st.decision == DecisionLabel::Deny)
        .collect();
    assert_eq!(
        denied.len(),
        2,
        "one denied CREATE per session: {statements:#?}"
    );
    for st in &denied {
        assert_eq!(st.kind, "ddl");
        assert_eq!(st.policy_ids[0], "no-ddl-in-production");
    }
    assert!(
        statements
            .iter()
            .any(|st| st.sql.starts_with("SELECT 'hello '")),
        "{statements:#?}"
    );
}

/// A TLS handshake with the given ALPN offer: prints the selected protocol, or the error.
fn handshake(port: u16, alpn: &str) -> String {
    format!(
        "import socket, ssl\n\
         ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False\n\
         ctx.verify_mode = ssl.CERT_NONE; ctx.set_alpn_protocols(['{alpn}'])\n\
         s = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n\
         try:\n\
         \x20   t = ctx.wrap_socket(s); print('selected', t.selected_alpn_protocol())\n\
         except (OSError, ssl.SSLError) as e:\n\
         \x20   print('failed', type(e).__name__)\n"
    )
}

#[test]
fn a_postgres_target_whose_first_bytes_cannot_be_followed_is_refused() {
    if !require_root() {
        return;
    }
    let pg = postgres17();
    let agent = agent(pg.port, true);
    let labels = [("repository", "acme/api")];
    // Allowed control: a handshake offering `postgresql` completes with Tollgate.
    let ok = agent.run_job(
        &labels,
        &["python3", "-c", &handshake(pg.port, "postgresql")],
    );
    assert_eq!(stdout(&ok), "selected postgresql\n", "{}", stderr(&ok));
    // TLS for another protocol to a PostgreSQL target is refused, not relayed.
    let other = agent.run_job(&labels, &["python3", "-c", &handshake(pg.port, "h2")]);
    assert!(stdout(&other).starts_with("failed"), "{}", stdout(&other));
    let sessions = agent.wait_sessions(None, 2);
    let refused: Vec<_> = sessions
        .iter()
        .filter(|s| {
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("TLS for another protocol"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{sessions:#?}");
    assert_eq!(refused[0].bytes_up, 0, "nothing was relayed");
}
