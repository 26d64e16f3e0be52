use super::*;

#[test]
fn empty_file_gives_defaults() {
    let config = Config::parse("", "agent.toml").unwrap();
    assert_eq!(config.proxy.port, DEFAULT_PROXY_PORT);
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9477");
    assert_eq!(config.control.socket, Path::new(DEFAULT_CONTROL_SOCKET));
    assert!(!config.recording.strict);
}

/// `--check-config` says where the results masking differs from the earlier
/// default, and names the targets that opted back in.
#[test]
fn notes_name_the_results_masking_default() {
    let defaults = Config::parse("", "agent.toml").unwrap();
    let notes = defaults.notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("masking.results = \"rules\""),
        "{notes:?}"
    );
    let per_target = Config::parse(
        "[[targets]]\nname = \"prod-db\"\nports = [5432]\nmasking = { results = \"detect\" }\n",
        "agent.toml",
    )
    .unwrap();
    assert!(per_target.notes()[0].contains("except on targets prod-db"));
    let detect = Config::parse("[masking]\nresults = \"detect\"\n", "agent.toml").unwrap();
    assert!(detect.notes().is_empty());
    let bad = Config::parse("[masking]\nresults = \"everything\"\n", "agent.toml")
        .unwrap_err()
        .to_string();
    assert!(bad.contains("masking.results"), "{bad}");
}

#[test]
fn full_file_parses() {
    let config = Config::parse(
        r#"
        [proxy]
        port = 900
        connect_timeout = "2s"
        [admin]
        listen = "127.0.0.1:19477"
        [cgroup]
        parent = "tollgate-test/a"
        [recording]
        strict = true
        [policy]
        mode = "audit"
        dir = "/srv/policies"
        [[targets]]
        name = "prod-db"
        cidrs = ["10.1.0.0/16"]
        ports = [5432, "6000-6010"]
        tags = { env = "production" }
        mode = "enforce"
        "#,
        "agent.toml",
    )
    .unwrap();
    assert_eq!(config.proxy.port, 900);
    assert_eq!(config.proxy.connect_timeout, Duration::from_secs(2));
    assert_eq!(config.cgroup.parent, "tollgate-test/a");
    assert!(config.recording.strict);
    assert_eq!(config.policy.mode, Mode::Audit);
    assert_eq!(config.targets[0].name, "prod-db");
    assert_eq!(config.targets[0].ports.len(), 2);
}

#[test]
fn bad_target_values_name_the_key() {
    let err = Config::parse("[[targets]]\nname = \"x\"\nports = [\"9-1\"]\n", "a.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("targets[0].ports"), "{err}");
    let err = Config::parse(
        "[[targets]]\nname = \"x\"\ncidrs = [\"10.0.0.0/33\"]\n",
        "a.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("targets[0].cidrs"), "{err}");
}

#[test]
fn type_error_names_key_and_position() {
    let err = Config::parse("[proxy]\nport = \"abc\"\n", "/etc/t.toml").unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("/etc/t.toml:2:8: `proxy.port`:"), "{text}");
}

#[test]
fn unknown_key_is_named() {
    let err = Config::parse("[proxy]\nprot = 1\n", "a.toml").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("a.toml:2:1"), "{text}");
    assert!(text.contains("prot"), "{text}");
}

#[test]
fn unknown_section_is_named() {
    let err = Config::parse("[proxxy]\n", "a.toml").unwrap_err();
    assert!(err.to_string().contains("proxxy"), "{err}");
}

#[test]
fn semantic_errors_name_the_key() {
    for (text, key) in [
        ("[proxy]\nport = 0", "proxy.port"),
        ("[proxy]\nipv4 = \"10.0.0.1\"", "proxy.ipv4"),
        ("[cgroup]\nparent = \"../x\"", "cgroup.parent"),
        ("[cgroup]\nparent = \"/abs\"", "cgroup.parent"),
        ("[bpf]\npin_dir = \"rel\"", "bpf.pin_dir"),
        ("[bpf]\nevents_ring_bytes = 5000", "bpf.events_ring_bytes"),
        ("[bpf]\nevents_ring_bytes = 2048", "bpf.events_ring_bytes"),
        ("[recording]\nbatch_size = 0", "recording.batch_size"),
        ("[recording]\nretention = \"0s\"", "recording.retention"),
        ("[log]\nlevel = \"[\"", "log.level"),
        ("[[targets]]\nname = \"a\"\n", "targets"),
        (
            "[policy]\nreload_interval = \"0s\"",
            "policy.reload_interval",
        ),
        ("[unix]\nrefresh_interval = \"0s\"", "unix.refresh_interval"),
        (
            "[[unix.engine_sockets]]\npath = \"docker.sock\"\nengine = \"docker\"",
            "unix.engine_sockets.path",
        ),
        (
            "[[unix.engine_sockets]]\npath = \"/srv/api.sock\"\nengine = \"\"",
            "unix.engine_sockets.engine",
        ),
    ] {
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
    }
}

#[test]
fn malformed_toml_has_position() {
    let err = Config::parse("[proxy\nport = 1", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("x.toml:1:"), "{err}");
}

#[test]
fn invalid_values_name_their_line() {
    for (text, at) in [
        (
            "# header\n[proxy]\nworkers = 2\nport = 0\n",
            "x.toml:4: `proxy.port`",
        ),
        (
            "[log]\nformat = \"json\"\n\n\nlevel = \"[\"\n",
            "x.toml:5: `log.level`",
        ),
        (
            "[[unix.engine_sockets]]\npath = \"/a.sock\"\nengine = \"\"\n",
            "x.toml:3: `unix.engine_sockets.engine`",
        ),
        // A dotted key set inline points at its own line.
        ("proxy.port = 0\n", "x.toml:1: `proxy.port`"),
    ] {
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with(at), "{text:?}: {err}");
    }
    // A default that another value makes invalid names the file alone.
    let err = Config::parse("[admin]\nlisten = \"127.0.0.1:977\"\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("x.toml:2: `admin.listen`"), "{err}");
    let err = Config::parse("[proxy]\nport = 9477\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("x.toml: `admin.listen`"), "{err}");
}

#[test]
fn approvals_parse_and_their_errors_name_the_key() {
    let config = Config::parse(
        "[approvals]\nreviewers = [\"uid:1000\", \"group:sre\"]\nmin_approvals = 2\n\
         timeout = \"30m\"\n\n[[approvals.webhooks]]\nurl = \"https://hooks.example.com/t\"\n\
         format = \"slack\"\ntoken_file = \"/etc/tollgate/token\"\n",
        "x.toml",
    )
    .unwrap();
    assert_eq!(config.approvals.min_approvals, 2);
    assert_eq!(config.approvals.timeout, Duration::from_secs(1800));
    assert_eq!(config.approvals.reviewers.len(), 2);
    assert_eq!(config.approvals.webhooks[0].format, WebhookFormat::Slack);
    for (text, at) in [
        (
            "[approvals]\nmin_approvals = 0\n",
            "x.toml:2: `approvals.min_approvals`",
        ),
        (
            "[approvals]\n\ntimeout = \"0s\"\n",
            "x.toml:3: `approvals.timeout`",
        ),
        (
            "[[approvals.webhooks]]\nurl = \"http://hooks.example.com/t\"\n",
            "x.toml:2: `approvals.webhooks.url`",
        ),
    ] {
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with(at), "{text:?}: {err}");
    }
    let err = Config::parse("[approvals]\nreviewers = [\"1000\"]\n", "x.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("uid:N"), "{err}");
}

#[test]
fn http_headers_must_be_lowercase_names_listed_once() {
    let ok = Config::parse(
        "[http]\nheaders = [\"x-ci-run\", \"user-agent\"]\n",
        "agent.toml",
    )
    .unwrap();
    assert_eq!(ok.http.headers, ["x-ci-run", "user-agent"]);
    for (text, says) in [
        ("[http]\nheaders = [\"X-CI-Run\"]\n", "`X-CI-Run`"),
        ("[http]\nheaders = [\"a\", \"a\"]\n", "listed twice"),
        ("[http]\nmax_header_size = 10\n", "http.max_header_size"),
    ] {
        let error = Config::parse(text, "agent.toml").unwrap_err().to_string();
        assert!(error.contains(says), "{error}");
        assert!(error.contains("agent.toml:"), "names the line: {error}");
    }
}

#[test]
fn tls_termination_is_for_http_targets() {
    let ok = Config::parse(
        "[[targets]]\nname = \"api\"\nports = [443]\nprotocol = \"http\"\ntls = \"terminate\"\n",
        "agent.toml",
    )
    .unwrap();
    assert_eq!(
        ok.targets[0].tls,
        Some(tollgate_policy::TargetTls::Terminate)
    );
    let error = Config::parse(
        "[[targets]]\nname = \"db\"\nports = [5432]\nprotocol = \"postgres\"\ntls = \"terminate\"\n",
        "agent.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("agent.toml:5") && error.contains("`db`"),
        "{error}"
    );
    let error = Config::parse(
        "[[targets]]\nname = \"api\"\ntls = \"inspect\"\n",
        "agent.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("inspect"), "{error}");
}
