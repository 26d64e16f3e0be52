//! HTTPS terminated by the agent (`tls = "terminate"`): a job that trusts the exported
//! local CA speaks HTTPS to a real TLS server through Tollgate, which decides each
//! request inside and originates TLS to the server, verifying its certificate. A client
//! that does not trust the CA fails its handshake, as it should; TLS to other targets
//! is untouched.
use tollgate::record::DecisionLabel;
use tollgate_e2e::{Agent, https::HttpsServer, require_root, stdout};

const POLICY: &str = r#"
@id("connect")
permit(principal, action == Action::"connect", resource);
@id("api-reads")
permit(principal, action == Action::"http:request", resource)
when { context.scheme == "https" && context.host == "api.test" && context.method == "GET" };
@id("no-secrets")
forbid(principal, action == Action::"http:request", resource)
when { context.path like "/secret*" };
"#;

#[test]
fn a_terminated_target_decides_requests_inside_tls_for_a_job_that_trusts_the_ca() {
    if !require_root() {
        return;
    }
    let server = HttpsServer::start(&["api.test"]);
    let extra = format!(
        "[http.tls]\nupstream_ca_file = \"{cert}\"\n\n\
         [[targets]]\nname = \"api\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
         protocol = \"http\"\ntls = \"terminate\"\n",
        cert = server.cert.display(),
        port = server.port
    );
    let agent = Agent::start_with_policy("", &extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("https.cedar"), POLICY).expect("policy");
    });
    let ca = agent.export_ca();
    let fetch = |path: &str, cacert: &std::path::Path| {
        format!(
            "curl -sS --max-time 10 --cacert {} --resolve api.test:{port}:127.0.0.1 \
             -w ' %{{http_code}}\\n' https://api.test:{port}{path}; echo exit=$?",
            cacert.display(),
            port = server.port
        )
    };
    // The control: directly, the server's own certificate is trusted.
    let direct = tollgate_e2e::output(
        std::process::Command::new("sh").args(["-c", &fetch("/", &server.cert)]),
    );
    assert!(
        stdout(&direct).contains(tollgate_e2e::https::BODY),
        "{}",
        stdout(&direct)
    );
    let script = format!(
        "echo $TOLLGATE_JOB_ID; {}; {}; {}",
        fetch("/", &ca),
        fetch("/secret/key", &ca),
        // A client that trusts only the server's certificate meets the local CA's.
        fetch("/", &server.cert),
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    let (job_id, rest) = text.split_once('\n').expect("the job id");
    let runs: Vec<&str> = rest.split("exit=").collect();
    assert!(
        runs[0].contains(tollgate_e2e::https::BODY) && runs[0].contains(" 200"),
        "the allowed request through terminated TLS: {text}"
    );
    assert!(runs[1].contains(" 403"), "{text}");
    assert!(runs[1].contains("\"no-secrets\""), "{text}");
    assert!(
        runs[2].contains(" 000") && runs[3].trim() != "0",
        "a client that does not trust the CA fails its handshake: {text}"
    );
    let sessions = agent.wait_sessions(Some(job_id), 3);
    let mut requests: Vec<(String, String, Option<u16>, DecisionLabel)> = Vec::new();
    for session in &sessions {
        for s in agent.statements(session) {
            let http = s.http.expect("an HTTP request's record");
            assert_eq!(http.scheme, "https");
            assert_eq!(http.host, "api.test");
            requests.push((http.method, http.path, http.status, s.decision));
        }
    }
    requests.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        requests,
        [
            (
                "GET".to_owned(),
                "/".to_owned(),
                Some(200),
                DecisionLabel::Allow
            ),
            (
                "GET".to_owned(),
                "/secret/key".to_owned(),
                Some(403),
                DecisionLabel::Deny
            ),
        ],
        "{sessions:?}"
    );
    let terminated = sessions
        .iter()
        .filter(|s| s.sni.as_deref() == Some("api.test"))
        .count();
    assert_eq!(
        terminated, 3,
        "every connection named its host: {sessions:?}"
    );
}

#[test]
fn http2_inside_terminated_tls_is_chosen_by_the_server_and_decided() {
    if !require_root() {
        return;
    }
    // The certificate and CA of a throwaway HTTPS server, presented by Node's HTTPS
    // server, which offers h2 and http/1.1.
    let certs = HttpsServer::start(&["h2.test"]);
    let servers = tollgate_e2e::http::HttpServers::with_tls(&certs.leaf, &certs.key);
    let extra = format!(
        "[http.tls]\nupstream_ca_file = \"{cert}\"\n\n\
         [[targets]]\nname = \"api\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
         protocol = \"http\"\ntls = \"terminate\"\n",
        cert = certs.cert.display(),
        port = servers.tls
    );
    let policy = POLICY.replace("api.test", "h2.test");
    let agent = Agent::start_with_policy("", &extra, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("https.cedar"), policy).expect("policy");
    });
    let ca = agent.export_ca();
    let fetch = |flag: &str, path: &str| {
        format!(
            "curl -sS --max-time 10 {flag} --cacert {} --resolve h2.test:{port}:127.0.0.1 \
             -w ' %{{http_code}} %{{http_version}}\\n' https://h2.test:{port}{path}",
            ca.display(),
            port = servers.tls
        )
    };
    let script = format!(
        "echo $TOLLGATE_JOB_ID; {}; {}; {}",
        fetch("--http2", "/v1/a"),
        fetch("--http2", "/secret/b"),
        fetch("--http1.1", "/v1/c"),
    );
    let out = agent.run_job(&[("repository", "acme/api")], &["sh", "-c", &script]);
    let text = stdout(&out);
    let (job_id, rest) = text.split_once('\n').expect("the job id");
    let lines: Vec<&str> = rest.lines().collect();
    assert_eq!(lines.len(), 3, "{text}{}", tollgate_e2e::stderr(&out));
    // The server chose h2 for a client offering it: both sides spoke HTTP/2.
    assert!(lines[0].ends_with(" 200 2"), "{text}");
    assert!(lines[0].contains("\"version\":\"2.0\""), "{text}");
    assert!(lines[1].ends_with(" 403 2"), "{text}");
    // A client offering only http/1.1 gets it, and so does the server.
    assert!(lines[2].ends_with(" 200 1.1"), "{text}");
    assert!(lines[2].contains("\"version\":\"1.1\""), "{text}");
    let sessions = agent.wait_sessions(Some(job_id), 3);
    let mut protocols: Vec<String> = sessions.iter().filter_map(|s| s.protocol.clone()).collect();
    protocols.sort();
    assert_eq!(protocols, ["http/1.1", "http/2", "http/2"], "{sessions:?}");
}
