//! `recording.durable = true`: a statement goes to the server only once its record is
//! committed. The differential: the same session, killed (agent SIGKILL) while the
//! server runs a statement, leaves that statement on record with durable recording and
//! not without it.
use std::time::Duration;

use tollgate::record::DecisionLabel;
use tollgate_e2e::{
    Agent, output,
    postgres::{LiveSession, postgres},
    require_root, stdout, wait_for,
};

/// Runs `sql` directly (not in a job) and returns its output.
fn direct(pg: &tollgate_e2e::postgres::Postgres, sql: &str) -> String {
    let args = pg.psql_args("127.0.0.1", sql);
    let out = output(std::process::Command::new(&args[0]).args(&args[1..]));
    stdout(&out).trim().to_owned()
}

/// The backends running a statement that contains `marker` (not this query itself).
fn backends(marker: &str) -> String {
    format!("FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()")
}

/// The SQL of every statement on record, after the agent is back.
fn recorded_sql(agent: &Agent) -> Vec<String> {
    agent
        .sessions(None)
        .iter()
        .flat_map(|session| agent.statements(session))
        .map(|st| st.sql.to_string())
        .collect()
}

#[test]
fn a_durable_statement_is_on_record_before_the_server_runs_it() {
    if !require_root() {
        return;
    }
    let pg = postgres();
    for durable in [false, true] {
        let mut agent = Agent::start_with(&format!(
            "[recording]\ndurable = {durable}\n\n{}",
            pg.target()
        ));
        let mut session = LiveSession::open(&agent, pg, &[("repository", "acme/api")]);
        assert_eq!(session.query("SELECT 40 + 2;"), "42");
        let marker = format!("durable={durable}");
        let sleep = format!("SELECT pg_sleep(8) /* {marker} */");
        session.send(&format!("{sleep};"));
        wait_for("the server to run it", Duration::from_secs(10), || {
            (direct(pg, &format!("SELECT count(*) {}", backends(&marker))) == "1").then_some(())
        });
        // The first statement is complete on record either way.
        wait_for(
            "the first statement on record",
            Duration::from_secs(10),
            || {
                recorded_sql(&agent)
                    .iter()
                    .any(|sql| sql.contains("40 + 2"))
                    .then_some(())
            },
        );
        agent.kill9();
        agent.start_again();
        let _ = session.finish();
        let sql = recorded_sql(&agent);
        assert!(sql.iter().any(|s| s.contains("40 + 2")), "{sql:?}");
        assert_eq!(
            sql.iter().any(|s| s.contains(&marker)),
            durable,
            "durable = {durable}: {sql:?}"
        );
        if durable {
            let statements: Vec<_> = agent
                .sessions(None)
                .iter()
                .flat_map(|session| agent.statements(session))
                .collect();
            let st = statements
                .iter()
                .find(|st| st.sql.contains(&marker))
                .expect("the running statement");
            // It never completed: no outcome is recorded for it.
            assert!(st.duration_us.is_none(), "{st:?}");
            assert_eq!(st.decision, DecisionLabel::Allow, "{st:?}");
        }
        // The server's statement ends now (its client is gone).
        direct(
            pg,
            &format!("SELECT pg_terminate_backend(pid) {}", backends(&marker)),
        );
    }
}
