//! The tracker over pgwire-encoded sequences, as a client and a server send them: what
//! goes on to each side, and the statements that complete.
use tollgate_pgwire::{backend, frontend};

use super::{DENIED_SQL, DENIED_SQLSTATE, DENIED_STATEMENT, harness::Harness};
use crate::{
    postgres::mask::ResultsMasking,
    record::{DecisionLabel, StatementRecord},
};

/// Reads and writes to every table; DDL is denied (no policy permits it).
const READ_WRITE: &str = "@id(\"rw\")\npermit(principal, action in \
                          [Action::\"sql:read\", Action::\"sql:write\"], resource);\n";
/// Writes only: reads are denied.
const WRITE_ONLY: &str =
    "@id(\"w\")\npermit(principal, action == Action::\"sql:write\", resource);\n";

/// The harness, with the tests' conveniences: whole sequences, and input that must parse.
struct Session(Harness);

impl Session {
    fn new(policy: &str, results: ResultsMasking) -> Self {
        Self(Harness::new(policy, results == ResultsMasking::Detect).unwrap())
    }

    /// The client sends `messages`; returns what goes on to the server.
    fn client(&mut self, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for raw in messages {
            self.0.client(raw, &mut out).unwrap();
        }
        out
    }

    /// The server sends `messages`; returns what goes on to the client.
    fn server(&mut self, messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for raw in messages {
            self.0.server(raw, &mut out).unwrap();
        }
        out
    }

    fn reload(&mut self, policy: &str) {
        self.0.reload(policy).unwrap();
    }

    fn finished(&mut self) -> Vec<StatementRecord> {
        self.0.finished()
    }

    fn unanswered(&mut self) -> Vec<StatementRecord> {
        self.0.unanswered()
    }
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    frontend::parse_message(name.as_bytes(), sql)
}

/// Bind of `statement` to the unnamed portal, with text parameters and results.
fn bind(statement: &str, params: &[&str]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    cstr(&mut body, statement);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for param in params {
        body.extend_from_slice(&(param.len() as i32).to_be_bytes());
        body.extend_from_slice(param.as_bytes());
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    tagged(b'B', &body)
}

fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name);
    tagged(b'D', &body)
}

fn execute() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, "");
    body.extend_from_slice(&0i32.to_be_bytes());
    tagged(b'E', &body)
}

fn sync() -> Vec<u8> {
    tagged(b'S', &[])
}

fn copy_data(row: &str) -> Vec<u8> {
    tagged(b'd', row.as_bytes())
}

fn copy_done() -> Vec<u8> {
    tagged(b'c', &[])
}

fn parse_complete() -> Vec<u8> {
    tagged(b'1', &[])
}

fn bind_complete() -> Vec<u8> {
    tagged(b'2', &[])
}

fn parameter_description() -> Vec<u8> {
    tagged(b't', &0i16.to_be_bytes())
}

/// RowDescription of text columns.
fn row_description(columns: &[&str]) -> Vec<u8> {
    let mut body = (columns.len() as i16).to_be_bytes().to_vec();
    for name in columns {
        cstr(&mut body, name);
        body.extend_from_slice(&0u32.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&25u32.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
    }
    tagged(b'T', &body)
}

fn row(values: &[&str]) -> Vec<u8> {
    let values: Vec<Option<&[u8]>> = values.iter().map(|v| Some(v.as_bytes())).collect();
    backend::data_row(&values)
}

fn complete(tag: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, tag);
    tagged(b'C', &body)
}

fn ready(status: u8) -> Vec<u8> {
    backend::ready_for_query(status)
}

fn server_error(code: &str, message: &str) -> Vec<u8> {
    backend::error_response(code, message, None, None)
}

/// CopyInResponse or CopyOutResponse (`G` or `H`) of one text column.
fn copy_response(tag: u8) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    tagged(tag, &body)
}

fn concat(messages: &[Vec<u8>]) -> Vec<u8> {
    messages.concat()
}

/// The SQLSTATE of each ErrorResponse in `bytes`, in order.
fn sqlstates(mut bytes: &[u8]) -> Vec<String> {
    let mut states = Vec::new();
    while bytes.len() >= 5 {
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize + 1;
        if let Ok(backend::Message::Error(fields)) = backend::parse(&bytes[..len]) {
            let code = backend::field(&fields, b'C').unwrap_or_default();
            states.push(String::from_utf8_lossy(code).into_owned());
        }
        bytes = &bytes[len..];
    }
    states
}

#[test]
fn a_describe_answered_after_its_execute_still_masks_the_rows() {
    let mut session = Session::new(READ_WRITE, ResultsMasking::Rules);
    // A pipelining client: everything goes out before the first answer.
    let sent = [
        parse("s1", "select name, ssn from people where id = $1"),
        describe_statement("s1"),
        bind("s1", &["7"]),
        execute(),
        sync(),
    ];
    assert_eq!(
        session.client(&sent),
        concat(&sent),
        "allowed: sent as it is"
    );
    let answers = [
        parse_complete(),
        parameter_description(),
        row_description(&["name", "ssn"]),
        bind_complete(),
    ];
    assert_eq!(session.server(&answers), concat(&answers));
    assert_eq!(
        session.server(&[row(&["Ada Lovelace", "078-05-1120"])]),
        row(&["Ada Lovelace", "****"]),
        "the ssn column is masked, the name is not"
    );
    let end = [complete("SELECT 1"), ready(b'I')];
    assert_eq!(session.server(&end), concat(&end));
    let finished = session.finished();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(finished[0].decision, DecisionLabel::Allow);
    assert_eq!(finished[0].rows, Some(1));
    assert_eq!(finished[0].params, ["7"]);
    assert!(session.unanswered().is_empty());
}

#[test]
fn an_error_mid_pipeline_ends_the_rest_up_to_sync_as_not_executed() {
    let mut session = Session::new(READ_WRITE, ResultsMasking::Rules);
    let sent = [
        parse("", "select 1"),
        bind("", &[]),
        execute(),
        parse("", "select * from missing"),
        bind("", &[]),
        execute(),
        sync(),
        parse("", "select 2"),
        bind("", &[]),
        execute(),
        sync(),
    ];
    assert_eq!(session.client(&sent), concat(&sent));
    let answers = [
        parse_complete(),
        bind_complete(),
        row(&["1"]),
        complete("SELECT 1"),
        // The second Parse fails (a missing table); the server skips to the Sync.
        server_error("42P01", "relation \"missing\" does not exist"),
        ready(b'I'),
        parse_complete(),
        bind_complete(),
        row(&["2"]),
        complete("SELECT 1"),
        ready(b'I'),
    ];
    assert_eq!(
        session.server(&answers),
        concat(&answers),
        "the server's own error"
    );
    let finished = session.finished();
    let summary: Vec<(&str, Option<u64>, Option<&str>)> = finished
        .iter()
        .map(|r| (&*r.sql, r.rows, r.error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("select 1", Some(1), None),
            (
                "select * from missing",
                None,
                Some("not executed: an earlier message failed")
            ),
            ("select 2", Some(1), None),
        ]
    );
    assert!(session.unanswered().is_empty());
}

#[test]
fn a_reload_between_parse_and_execute_decides_the_execute_again() {
    for (policy, denied) in [(READ_WRITE, false), (WRITE_ONLY, true)] {
        let mut session = Session::new(READ_WRITE, ResultsMasking::Rules);
        let parsed = [parse("s1", "select * from accounts")];
        assert_eq!(session.client(&parsed), concat(&parsed));
        assert_eq!(session.server(&[parse_complete()]), parse_complete());
        session.reload(policy);
        let sent = session.client(&[bind("s1", &[]), execute(), sync()]);
        let answers = if denied {
            // The Execute goes to the server as a Parse that fails, for the client to
            // get an error where its Execute would have run.
            assert_eq!(
                sent,
                concat(&[
                    bind("s1", &[]),
                    frontend::parse_message(DENIED_STATEMENT, DENIED_SQL),
                    sync()
                ])
            );
            vec![
                bind_complete(),
                server_error(
                    "42601",
                    "syntax error at or near \"TOLLGATE_DENIED_BY_POLICY\"",
                ),
                ready(b'I'),
            ]
        } else {
            assert_eq!(sent, concat(&[bind("s1", &[]), execute(), sync()]));
            vec![
                bind_complete(),
                row(&["1"]),
                complete("SELECT 1"),
                ready(b'I'),
            ]
        };
        let to_client = session.server(&answers);
        let finished = session.finished();
        assert_eq!(finished.len(), 1, "{finished:?}");
        if denied {
            assert_eq!(sqlstates(&to_client), [DENIED_SQLSTATE], "Tollgate's error");
            assert_eq!(finished[0].decision, DecisionLabel::Deny);
            assert_eq!(finished[0].sqlstate.as_deref(), Some(DENIED_SQLSTATE));
        } else {
            assert_eq!(to_client, concat(&answers));
            assert_eq!(finished[0].decision, DecisionLabel::Allow);
            assert_eq!(finished[0].rows, Some(1));
        }
    }
}

#[test]
fn copy_from_the_client_and_to_the_client_relay_every_row() {
    let mut session = Session::new(READ_WRITE, ResultsMasking::Detect);
    // COPY FROM STDIN: the client's rows go to the server as they are.
    let query = [frontend::query("copy people (name, email) from stdin")];
    assert_eq!(session.client(&query), concat(&query));
    assert_eq!(session.server(&[copy_response(b'G')]), copy_response(b'G'));
    let rows = [
        copy_data("Ada\tada@example.com\n"),
        copy_data("Grace\t42\n"),
        copy_done(),
    ];
    assert_eq!(session.client(&rows), concat(&rows));
    let end = [complete("COPY 2"), ready(b'I')];
    assert_eq!(session.server(&end), concat(&end));
    // COPY TO STDOUT: with results detected, an address in a row is masked and the rest
    // is not.
    let query = [frontend::query("copy people (name, email) to stdout")];
    assert_eq!(session.client(&query), concat(&query));
    assert_eq!(session.server(&[copy_response(b'H')]), copy_response(b'H'));
    assert_eq!(
        session.server(&[copy_data("Ada\tada@example.com\n")]),
        copy_data("Ada\t****@example.com\n")
    );
    assert_eq!(
        session.server(&[copy_data("Grace\t42\n")]),
        copy_data("Grace\t42\n")
    );
    let end = [copy_done(), complete("COPY 2"), ready(b'I')];
    assert_eq!(session.server(&end), concat(&end));
    let finished = session.finished();
    let summary: Vec<(&str, Option<u64>)> = finished.iter().map(|r| (&*r.kind, r.rows)).collect();
    assert_eq!(summary, [("write", Some(2)), ("read", Some(2))]);
}

#[test]
fn a_denied_statement_in_a_transaction_fails_it_as_the_server_would() {
    let mut session = Session::new(READ_WRITE, ResultsMasking::Rules);
    let begin = [frontend::query("begin")];
    assert_eq!(session.client(&begin), concat(&begin));
    let answers = [complete("BEGIN"), ready(b'T')];
    assert_eq!(session.server(&answers), concat(&answers));
    // The allowed control goes through as it is.
    let select = [frontend::query("select 1")];
    assert_eq!(session.client(&select), concat(&select));
    let answers = [
        row_description(&["?column?"]),
        row(&["1"]),
        complete("SELECT 1"),
        ready(b'T'),
    ];
    assert_eq!(session.server(&answers), concat(&answers));
    // DDL is denied: the server gets a query that fails, which fails the transaction.
    let drop = session.client(&[frontend::query("drop table accounts")]);
    assert_eq!(drop, frontend::query(DENIED_SQL));
    let to_client = session.server(&[
        server_error(
            "42601",
            "syntax error at or near \"TOLLGATE_DENIED_BY_POLICY\"",
        ),
        ready(b'E'),
    ]);
    assert_eq!(sqlstates(&to_client), [DENIED_SQLSTATE]);
    assert!(
        to_client.ends_with(&ready(b'E')),
        "the transaction has failed"
    );
    let rollback = [frontend::query("rollback")];
    assert_eq!(session.client(&rollback), concat(&rollback));
    let answers = [complete("ROLLBACK"), ready(b'I')];
    assert_eq!(session.server(&answers), concat(&answers));
    let finished = session.finished();
    let summary: Vec<(&str, &str, Option<&str>)> = finished
        .iter()
        .map(|r| (&*r.sql, r.decision.as_str(), r.sqlstate.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("begin", "allow", None),
            ("select 1", "allow", None),
            ("drop table accounts", "deny", Some(DENIED_SQLSTATE)),
            ("rollback", "allow", None),
        ]
    );
}

#[test]
fn a_restarted_session_forgets_what_the_last_one_left_pending() {
    let mut session = Session::new(WRITE_ONLY, ResultsMasking::Rules);
    session.client(&[frontend::query("insert into t values (1)")]);
    // The restart is under read-write: the select that write-only denied now goes on.
    session.0.restart(READ_WRITE).unwrap();
    assert!(session.unanswered().is_empty());
    let select = [frontend::query("select 1")];
    assert_eq!(session.client(&select), concat(&select));
    let answers = [complete("SELECT 0"), ready(b'I')];
    assert_eq!(session.server(&answers), concat(&answers));
    let finished = session.finished();
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(&*finished[0].sql, "select 1");
    assert_eq!(finished[0].decision, DecisionLabel::Allow);
}
