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
