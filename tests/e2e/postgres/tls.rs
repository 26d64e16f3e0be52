//! TLS: terminated with the local CA on the client leg, originated to the server, and
//! offered to a client only when the server leg has it.

use super::*;

#[test]
fn tls_is_terminated_with_the_local_ca_and_originated_to_the_server() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let agent = agent(pg.port);
    // The CA the agent created in its state directory.
    let ca_file = agent.export_ca();
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // SCRAM through a terminated TLS session: SCRAM-SHA-256-PLUS is not offered, and
    // under `prefer` the server connection is plaintext so that the server does not
    // demand channel binding.
    for (user, mode, server_tls) in [
        ("postgres", "require", "t"),
        ("postgres", "verify-full", "t"),
        (tollgate_e2e::postgres::SCRAM_USER, "verify-full", "f"),
    ] {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={mode} sslrootcert={}",
            pg.port,
            ca_file.display()
        );
        let out = output(
            agent
                .run_command(
                    &[("repository", "acme/api")],
                    &["psql", "-X", "-A", "-t", &conninfo, "-c", sql],
                )
                .env("PGPASSWORD", tollgate_e2e::postgres::SCRAM_PASSWORD),
        );
        assert!(
            out.status.success(),
            "{user} sslmode={mode}: {}\n{}",
            stderr(&out),
            agent.log()
        );
        assert_eq!(stdout(&out).trim(), server_tls, "{user}: TLS to the server");
    }
    // Without Tollgate's CA, verify-full fails: the client really talks to Tollgate.
    let strict = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert=/dev/null",
        pg.port
    );
    let out = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", "-A", "-t", &strict, "-c", "select 1"],
    );
    assert!(
        !out.status.success(),
        "verify-full without the CA must fail"
    );
}

/// A PostgreSQL server stand-in without TLS: answers SSLRequest with `N`, then refuses
/// the startup with an error naming itself. Counts the SSLRequests it got.
fn tls_less_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::{
        io::Read as _,
        net::TcpListener,
        sync::{Arc, atomic::AtomicUsize},
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ssl_requests = Arc::new(AtomicUsize::new(0));
    let counter = ssl_requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                loop {
                    let mut head = [0u8; 8];
                    if stream.read_exact(&mut head).is_err() {
                        return;
                    }
                    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
                    if head[4..8] == tollgate_pgwire::SSL_REQUEST.to_be_bytes() {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = stream.write_all(b"N");
                        continue;
                    }
                    let mut rest = vec![0u8; len.saturating_sub(8)];
                    let _ = stream.read_exact(&mut rest);
                    let refusal = tollgate_pgwire::backend::error_response(
                        "28000",
                        "tls-less stand-in",
                        None,
                        None,
                    );
                    let _ = stream.write_all(&refusal);
                    return;
                }
            });
        }
    });
    (port, ssl_requests)
}

#[test]
fn a_client_is_offered_tls_only_when_the_server_leg_has_it() {
    if !require_root() {
        return;
    }
    let (port, ssl_requests) = tls_less_server();
    let agent = agent(port);
    let conninfo =
        |mode: &str| format!("host=127.0.0.1 port={port} user=app dbname=app sslmode={mode}");
    // Directly, a client that requires TLS is refused by this server...
    let direct = output(Command::new("psql").args(["-X", &conninfo("require"), "-c", "select 1"]));
    assert!(!direct.status.success());
    assert!(
        stderr(&direct).contains("server does not support SSL"),
        "{}",
        stderr(&direct)
    );
    // ...and so it is through Tollgate: the agent asked the server and answered as it did.
    let job = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", &conninfo("require"), "-c", "select 1"],
    );
    assert!(!job.status.success());
    assert!(
        stderr(&job).contains("server does not support SSL"),
        "the client must not get TLS from Tollgate when the server has none: {}\n{}",
        stderr(&job),
        agent.log()
    );
    // A client that merely prefers TLS goes on in plaintext and reaches the server.
    let job = agent.run_job(
        &[("repository", "acme/api")],
        &["psql", "-X", &conninfo("prefer"), "-c", "select 1"],
    );
    assert!(!job.status.success());
    assert!(
        stderr(&job).contains("tls-less stand-in"),
        "{}\n{}",
        stderr(&job),
        agent.log()
    );
    // Each session asked the server, and no leg of either was TLS (the client that
    // required TLS gave up before its startup, so its session has no startup at all).
    assert!(ssl_requests.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let sessions = agent.wait_sessions(None, 2);
    for session in &sessions {
        assert_ne!(session.client_tls, Some(true), "{session:?}");
        assert_ne!(session.server_tls, Some(true), "{session:?}");
    }
    assert!(
        sessions
            .iter()
            .any(|s| s.client_tls == Some(false) && s.db_user.as_deref() == Some("app")),
        "the prefer client's startup is recorded, in plaintext: {sessions:?}"
    );
}
