//! OIDC attestation in jobs (GitHub, GitLab, Buildkite tokens from a real test issuer),
//! policies that require a verified identity, and identity files for cron jobs.

use super::*;

/// `tollgate run --identity-file F -- sh -c 'tollgate attest'` with `token` in
/// TOLLGATE_ID_TOKEN.
fn attest_in_job(agent: &Agent, file: &Path, token: &str) -> Output {
    let script = format!("exec '{}' attest", tollgate_bin().display());
    output(
        agent
            .tollgate()
            .arg("run")
            .arg("--identity-file")
            .arg(file)
            .args(["--", "sh", "-c", &script])
            .env("TOLLGATE_ID_TOKEN", token)
            .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL"),
    )
}

#[test]
fn oidc_tokens_are_verified_and_bad_ones_refused_with_clear_errors() {
    if !require_root() {
        return;
    }
    let issuer = Issuer::start();
    let agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    let file = identity_file(agent.dir.path(), "7001");
    let good = issuer.github_claims("acme/api", "7001", "1");

    let valid = attest_in_job(&agent, &file, &issuer.sign(&good));
    assert!(valid.status.success(), "valid token: {}", stderr(&valid));
    assert!(
        stderr(&valid).contains("is oidc-verified"),
        "{}",
        stderr(&valid)
    );
    assert_eq!(issuer.jwks_fetches(), 1, "discovery, then one JWKS fetch");

    // Flip one character in the middle of the signature.
    let signed = issuer.sign(&good);
    let at = signed.rfind('.').expect("three parts") + 20;
    let flipped = if &signed[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{flipped}{}", &signed[..at], &signed[at + 1..]);
    let mut expired = good.clone();
    expired["exp"] = (tollgate_e2e::oidc::now() - 3600).into();
    expired["iat"] = (tollgate_e2e::oidc::now() - 7200).into();
    expired["nbf"] = (tollgate_e2e::oidc::now() - 7200).into();
    let mut audience = good.clone();
    audience["aud"] = "someone-else".into();
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = "https://token.actions.githubusercontent.com".into();
    let mut other_run = good.clone();
    other_run["run_id"] = "7002".into();
    let cases = [
        ("tampered signature", tampered, "signature does not verify"),
        ("expired", issuer.sign(&expired), "token expired"),
        (
            "wrong audience",
            issuer.sign(&audience),
            "token audience is not `tollgate`",
        ),
        (
            "wrong issuer",
            issuer.sign(&wrong_issuer),
            "token issuer is not",
        ),
        (
            "claims of another run",
            issuer.sign(&other_run),
            "claim `run_id` is `7002`, but the job's run_id is `7001`",
        ),
    ];
    for (name, token, message) in &cases {
        let out = attest_in_job(&agent, &file, token);
        assert_eq!(out.status.code(), Some(1), "{name} was accepted");
        assert!(
            stderr(&out).contains(message),
            "{name}: expected `{message}` in: {}",
            stderr(&out)
        );
        assert!(
            refused(&agent, "attest", message),
            "{name} not on the audit trail"
        );
    }
    assert_eq!(issuer.jwks_fetches(), 1, "known kid: no refetch");

    // An unknown kid refetches the JWKS once, then is refused; a second one within the
    // refetch interval does not refetch again.
    let unknown = issuer.sign_unpublished(&good);
    let out = attest_in_job(&agent, &file, &unknown);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown signing key `k2`")
            && stderr(&out).contains("even after refetching"),
        "{}",
        stderr(&out)
    );
    assert_eq!(issuer.jwks_fetches(), 2, "one refetch for the unknown kid");
    let out = attest_in_job(&agent, &file, &unknown);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(issuer.jwks_fetches(), 2, "refetch rate-limited");

    // Attesting outside any job is refused.
    let out = output(
        agent
            .tollgate()
            .arg("attest")
            .env("TOLLGATE_ID_TOKEN", issuer.sign(&good)),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not in a Tollgate job"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        agent.metric("tollgate_identity_events_total{action=\"attest\",result=\"ok\"}"),
        1.0
    );
}

#[test]
fn buildkite_jobs_are_verified_for_the_configured_organization_only() {
    if !require_root() {
        return;
    }
    let issuer = Issuer::start();
    let job = "018485f6-1f53-4f18-9b53-72428db4d239";
    let file = |dir: &Path| {
        let path = dir.join("buildkite-identity.toml");
        fs::write(
            &path,
            format!(
                "provider = \"buildkite\"\nrepository = \"acme/deploy\"\nrun_id = \"175\"\n\
                 ci_job_id = \"{job}\"\nref = \"main\"\n"
            ),
        )
        .expect("identity file");
        path
    };

    // Without an organization, Buildkite tokens cannot be verified, and the error says
    // what to set.
    let unconfigured = Agent::start_with(&identity_config(&issuer, "[0]"));
    let token = issuer.sign(&issuer.buildkite_claims("acme", "deploy", 175, job));
    let out = attest_in_job(&unconfigured, &file(unconfigured.dir.path()), &token);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("identity.buildkite.organization"),
        "{}",
        stderr(&out)
    );
    drop(unconfigured);

    let agent = Agent::start_with(&format!(
        "{}\n[identity.buildkite]\norganization = \"acme\"\nissuer = \"{}\"\n",
        identity_config(&issuer, "[0]"),
        issuer.url
    ));
    let path = file(agent.dir.path());
    let valid = attest_in_job(&agent, &path, &token);
    assert!(valid.status.success(), "{}", stderr(&valid));
    assert!(
        stderr(&valid).contains("is oidc-verified: buildkite acme/deploy run 175"),
        "{}",
        stderr(&valid)
    );
    // Another organization's pipeline of the same name, from the same issuer.
    let foreign = issuer.sign(&issuer.buildkite_claims("evil", "deploy", 175, job));
    let out = attest_in_job(&agent, &path, &foreign);
    assert_eq!(out.status.code(), Some(1));
    let message = "claim `organization_slug` is `evil`, but this agent accepts only `acme`";
    assert!(stderr(&out).contains(message), "{}", stderr(&out));
    assert!(refused(&agent, "attest", message));
    // The right organization, another build.
    let other = issuer.sign(&issuer.buildkite_claims("acme", "deploy", 176, job));
    let out = attest_in_job(&agent, &path, &other);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("claim `build_number` is `176`, but the job's run_id is `175`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn policy_can_require_an_oidc_verified_identity() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let issuer = Issuer::start();
    let port = http.port();
    let policy = format!(
        "@id(\"verified-only\")\n\
         permit(principal, action == Action::\"connect\", resource)\n\
         when {{ resource.port == {port} && principal.assurance == \"oidc-verified\" }};\n\
         @id(\"token-endpoint\")\n\
         permit(principal, action == Action::\"connect\", resource)\n\
         when {{ resource.port == {} }};\n",
        issuer.port()
    );
    let agent = Agent::start_with_policy("", &identity_config(&issuer, "[0]"), |dir| {
        fs::create_dir_all(dir).expect("policy dir");
        fs::write(dir.join("oidc.cedar"), policy).expect("policy");
    });
    let file = identity_file(agent.dir.path(), "8001");
    issuer.set_endpoint_claims(issuer.github_claims("acme/api", "8001", "1"));
    let url = format!("http://127.0.0.1:{port}/");
    let script = format!(
        "curl -sS -o /dev/null {url} && echo before-ok; '{bin}' attest || exit 9; \
         curl -sS {url} && echo after-ok",
        bin = tollgate_bin().display()
    );
    let out = output(
        agent
            .tollgate()
            .arg("run")
            .arg("--identity-file")
            .arg(&file)
            .args(["--", "sh", "-c", &script])
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", issuer.request_url())
            .env(
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                tollgate_e2e::oidc::REQUEST_TOKEN,
            ),
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), agent.log());
    assert!(!stdout(&out).contains("before-ok"), "{}", stdout(&out));
    assert!(stdout(&out).contains("after-ok"), "{}", stdout(&out));
    let sessions = agent.wait_sessions(None, 3);
    let to_http: Vec<_> = sessions
        .iter()
        .filter(|s| s.destination == Some(format!("127.0.0.1:{port}")))
        .collect();
    assert_eq!(to_http.len(), 2, "{sessions:#?}");
    // Newest first: the verified one was allowed, the asserted one denied.
    assert_eq!(to_http[0].decision, DecisionLabel::Allow);
    assert_eq!(to_http[0].assurance, Some(Assurance::OidcVerified));
    assert_eq!(to_http[1].decision, DecisionLabel::Deny);
    assert_eq!(to_http[1].assurance, Some(Assurance::HostAsserted));
}

#[test]
fn gitlab_hook_enrolls_the_job_shell_with_a_verified_identity() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let issuer = Issuer::start();
    let agent = Agent::start_with(&identity_config(&issuer, "[0]"));
    let token = issuer.sign(&issuer.gitlab_claims("acme/api", "901", "31337"));
    let url = format!("http://127.0.0.1:{}/", http.port());
    // As GitLab Runner's shell executor runs pre_build_script then the job's script.
    let script = format!(
        "'{bin}' hook gitlab || exit 9; curl -sS -o /dev/null {url}",
        bin = tollgate_bin().display()
    );
    let out = output(
        Command::new("sh")
            .args(["-c", &script])
            .env("TOLLGATE_CONTROL_SOCKET", &agent.socket)
            .env("CI_PROJECT_PATH", "acme/api")
            .env("CI_PIPELINE_ID", "901")
            .env("CI_JOB_ID", "31337")
            .env("CI_JOB_NAME", "migrate")
            .env("CI_COMMIT_REF_NAME", "main")
            .env("GITLAB_USER_LOGIN", "alice")
            .env("TOLLGATE_ID_TOKEN", token),
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), agent.log());
    assert!(stderr(&out).contains("(oidc-verified)"), "{}", stderr(&out));
    let sessions = agent.wait_sessions(None, 1);
    let s = &sessions[0];
    assert_eq!(s.job_identity.provider, "gitlab");
    assert_eq!(s.job_identity.ci_job_id, "31337");
    assert_eq!(s.job_identity.run_id, "901");
    assert_eq!(s.job_identity.job, "migrate");
    assert_eq!(s.assurance, Some(Assurance::OidcVerified));
    // The shell is gone: the job ends with it.
    wait_for("the gitlab job to end", Duration::from_secs(10), || {
        agent.jobs().is_empty().then_some(())
    });
    assert!(agent.job_cgroups().is_empty());

    // The token's job_id must be this job's.
    let wrong = issuer.sign(&issuer.gitlab_claims("acme/api", "901", "31338"));
    let out = output(
        Command::new("sh")
            .args(["-c", &format!("'{}' hook gitlab", tollgate_bin().display())])
            .env("TOLLGATE_CONTROL_SOCKET", &agent.socket)
            .env("CI_PROJECT_PATH", "acme/api")
            .env("CI_PIPELINE_ID", "901")
            .env("CI_JOB_ID", "31337")
            .env("TOLLGATE_ID_TOKEN", wrong),
    );
    assert!(
        out.status.success(),
        "the job is still enrolled, host-asserted"
    );
    assert!(
        stderr(&out).contains("claim `job_id` is `31338`, but the job's ci_job_id is `31337`"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("(host-asserted)"), "{}", stderr(&out));
}

#[test]
fn identity_files_identify_cron_jobs_and_bad_ones_name_the_line() {
    if !require_root() {
        return;
    }
    let http = Server::http("127.0.0.1:0");
    let agent = Agent::start();
    let file = agent.dir.path().join("backup.toml");
    fs::write(
        &file,
        "provider = \"cron\"\nrepository = \"acme/billing\"\njob = \"nightly-export\"\n",
    )
    .expect("identity file");
    let url = format!("http://127.0.0.1:{}/", http.port());
    let out = output(
        agent
            .tollgate()
            .arg("run")
            .arg("--identity-file")
            .arg(&file)
            .args(["--", "curl", "-sS", "-o", "/dev/null", &url]),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sessions = agent.wait_sessions(None, 1);
    assert_eq!(sessions[0].job_identity.provider, "cron");
    assert_eq!(sessions[0].job_identity.job, "nightly-export");
    assert_eq!(sessions[0].assurance, Some(Assurance::HostAsserted));
    let list = output(agent.tollgate().args(["sessions", "list"]));
    assert!(
        stdout(&list).contains("cron acme/billing job nightly-export"),
        "{}",
        stdout(&list)
    );

    fs::write(&file, "provider = \"cron\"\nrepo = \"acme/billing\"\n").expect("bad file");
    let out = output(
        agent
            .tollgate()
            .arg("run")
            .arg("--identity-file")
            .arg(&file)
            .args(["--", "true"]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:2:1: unknown field `repo`", file.display())),
        "{}",
        stderr(&out)
    );
}
