//! Masking of sensitive values in results and recordings, and its exemptions, live
//! across reloads.

use super::*;

#[test]
fn sensitive_values_are_masked_unless_the_job_is_exempt_and_never_recorded() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    let setup = "DROP TABLE IF EXISTS tollgate_customers; \
        CREATE TABLE tollgate_customers (id int, name text, email text, card text, ssn text, age int, account int8); \
        INSERT INTO tollgate_customers VALUES \
        (1, 'Alice', 'alice@example.com', '4111 1111 1111 1111', '123-45-6789', 41, 4111111111111111), \
        (2, 'Bob', 'bob@example.org', 'no card on file', NULL, 37, 4567890123456791)";
    direct_psql(pg, setup);
    let targets = format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{port}]\n\
         protocol = \"postgres\"\nmasking = {{ results = \"detect\" }}\n\n\
         [[masking.rules]]\ncolumns = [\"ssn\", \"*_ssn\"]\ntables = [\"tollgate_customers\"]\n",
        port = pg.port
    );
    let policy = format!(
        "{POLICY}\n@id(\"auditors-see-clear\")\n\
         permit(principal, action == Action::\"mask:exempt\", resource)\n\
         when {{ principal.hasTag(\"team\") && principal.getTag(\"team\") == \"audit\" }};\n"
    );
    let agent = Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), &policy).expect("policy");
    });
    let query = pg.psql_args(
        "127.0.0.1",
        "SELECT name, email, card, ssn, age, account FROM tollgate_customers ORDER BY id",
    );
    let query: Vec<&str> = query.iter().map(String::as_str).collect();

    let masked = agent.run_job(&[("repository", "acme/api")], &query);
    assert!(masked.status.success(), "{}", stderr(&masked));
    assert_eq!(
        stdout(&masked).lines().collect::<Vec<_>>(),
        [
            "Alice|****@example.com|************1111|****|41|4111111111111111",
            "Bob|****@example.org|no card on file||37|4567890123456791",
        ],
        "text columns masked for a job without an exemption; the int8 never"
    );
    let clear = agent.run_job(&[("repository", "acme/api"), ("team", "audit")], &query);
    assert!(clear.status.success(), "{}", stderr(&clear));
    assert_eq!(
        stdout(&clear).lines().collect::<Vec<_>>(),
        [
            "Alice|alice@example.com|4111 1111 1111 1111|123-45-6789|41|4111111111111111",
            "Bob|bob@example.org|no card on file||37|4567890123456791",
        ],
        "clear for an exempt job"
    );
    assert_eq!(
        agent.metric("tollgate_postgres_masked_rows_total"),
        2.0,
        "both rows of the first job had masked values"
    );

    // What is recorded is masked too, exempt or not.
    let insert = pg.psql_args(
        "127.0.0.1",
        "INSERT INTO tollgate_customers VALUES (3, 'Carol', 'carol@example.net', '5500 0000 0000 0004', NULL, 29, 1)",
    );
    let insert: Vec<&str> = insert.iter().map(String::as_str).collect();
    let out = agent.run_job(&[("repository", "acme/api"), ("team", "audit")], &insert);
    assert!(out.status.success(), "{}", stderr(&out));
    let sessions = agent.wait_sessions(None, 3);
    let recorded: Vec<String> = sessions
        .iter()
        .flat_map(|s| statements(&agent, s))
        .map(|s| s.sql.to_string())
        .collect();
    let insert_sql = recorded
        .iter()
        .find(|s| s.starts_with("INSERT INTO tollgate_customers"))
        .unwrap_or_else(|| panic!("no INSERT recorded: {recorded:?}"));
    assert!(
        insert_sql.contains("'****@example.net'") && insert_sql.contains("'************0004'"),
        "{insert_sql}"
    );
    assert!(
        !recorded.iter().any(|s| s.contains("carol@")),
        "{recorded:?}"
    );
    direct_psql(pg, "DROP TABLE tollgate_customers");
}

#[test]
fn masking_and_exemptions_follow_a_reload_in_live_sessions() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    direct_psql(
        pg,
        "DROP TABLE IF EXISTS tollgate_codes; CREATE TABLE tollgate_codes (code text); \
         INSERT INTO tollgate_codes VALUES ('XYZ-123')",
    );
    let targets = format!(
        "[[targets]]\nname = \"pg\"\ncidrs = [\"127.0.0.1/32\"]\nports = [{}]\n\
         protocol = \"postgres\"\n",
        pg.port
    );
    let exemption = "@id(\"auditors-see-clear\")\n\
        permit(principal, action == Action::\"mask:exempt\", resource)\n\
        when { principal.hasTag(\"team\") && principal.getTag(\"team\") == \"audit\" };\n";
    let agent = Agent::start_with_policy("", &targets, |dir| {
        std::fs::create_dir_all(dir).expect("policy dir");
        std::fs::write(dir.join("pg.cedar"), format!("{POLICY}\n{exemption}")).expect("policy");
    });
    let select = "SELECT code FROM tollgate_codes;";
    let mut plain = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
    let mut audit = LiveSession::open(&agent, pg, &[("repository", "acme/api"), ("team", "audit")]);
    assert_eq!(
        plain.query(select),
        "XYZ-123",
        "no rule covers the column yet"
    );
    assert_eq!(audit.query(select), "XYZ-123");

    // Appends to the agent's config file; returns what it held before.
    let append = |text: &str| {
        let before = std::fs::read_to_string(&agent.config_path).expect("config");
        std::fs::write(&agent.config_path, format!("{before}\n{text}")).expect("config");
        before
    };
    let generation = |agent: &Agent| agent.status().policy.generation;
    let before = generation(&agent);
    append("[[masking.rules]]\ncolumns = [\"code\"]\n");
    wait_for("the masking reload", Duration::from_secs(10), || {
        (generation(&agent) > before).then_some(())
    });
    assert_eq!(
        plain.query(select),
        "****",
        "the live session masks after the reload"
    );
    assert_eq!(
        audit.query(select),
        "XYZ-123",
        "an exempt job still sees clear"
    );

    // A broken rule is refused; the rule in force stays.
    let errors = |agent: &Agent| agent.metric("tollgate_policy_reloads_total{result=\"error\"}");
    let failed = errors(&agent);
    let config = append("[[masking.rules]]\ncolumns = []\n");
    wait_for("the failed reload", Duration::from_secs(10), || {
        (errors(&agent) > failed).then_some(())
    });
    assert!(
        agent.log().contains("masking.rules"),
        "the error names the key"
    );
    assert_eq!(plain.query(select), "****");

    // Withdrawing the exemption masks the auditor's live session too.
    // (Config first: the reload that loads the three policies has read both.)
    std::fs::write(&agent.config_path, &config).expect("config");
    std::fs::write(agent.policy_dir().join("pg.cedar"), POLICY).expect("policy");
    wait_for("the policy reload", Duration::from_secs(10), || {
        (agent.status().policy.policies == 3).then_some(())
    });
    assert_eq!(audit.query(select), "****", "the exemption was withdrawn");
    let mut fresh = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
    assert_eq!(fresh.query(select), "****", "a new session masks as well");
    for session in [plain, audit, fresh] {
        session.close();
    }
    direct_psql(pg, "DROP TABLE tollgate_codes");
}
