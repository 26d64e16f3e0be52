//! A synthetic store shaped like a busy fleet's month, for the review console's
//! benchmark (`tollgate bench-store`, hidden; docs/benchmarks.md): jobs with pipeline
//! identities, their connections (most of them PostgreSQL sessions) and the sessions'
//! statements, written with the writer's own row functions. Deterministic for a seed.
use std::{borrow::Cow, io::Write as _, path::Path, sync::Arc};

use rusqlite::Connection;

use super::{
    ConnectionRecord, DecisionLabel, JobRecord, RecordError, StatementRecord,
    batch::{insert_connection, insert_job},
    schema,
    statements::{JsonLists, insert},
};
use crate::{
    identity::{Assurance, Identity},
    jobs::JobKind,
};

/// How big a store to make.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub jobs: u64,
    pub connections: u64,
    pub statements: u64,
    /// The time the records span, ending now.
    pub days: u64,
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Default, Clone, Copy)]
pub struct Written {
    pub jobs: u64,
    pub connections: u64,
    pub statements: u64,
}

/// xorshift64*: small, fast and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const TABLES: [&str; 20] = [
    "orders",
    "customers",
    "payments",
    "invoices",
    "users",
    "sessions",
    "events",
    "products",
    "inventory",
    "shipments",
    "refunds",
    "accounts",
    "ledger",
    "audit_log",
    "carts",
    "coupons",
    "reviews",
    "addresses",
    "subscriptions",
    "plans",
];
const WORKFLOWS: [&str; 5] = ["deploy", "ci", "nightly", "migrate", "release"];
const JOBS: [&str; 6] = ["build", "test", "migrate", "deploy", "seed", "backup"];
const ENVIRONMENTS: [&str; 4] = ["prod", "staging", "dev", "ci"];

/// `id` as a UUID-shaped string that sorts by `at` (as the agent's v7 ids do).
fn id(at: i64, n: u64) -> String {
    let hex = format!("{:012x}{:020x}", at, n);
    format!(
        "{}-{}-7{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn statement_text(rng: &mut Rng, table: &str) -> (&'static str, String, Option<u64>) {
    let roll = rng.below(100);
    if roll < 68 {
        let sql = format!(
            "SELECT id, status, total, created_at FROM {table} WHERE customer_id = $1 \
             ORDER BY created_at DESC LIMIT 20"
        );
        ("read", sql, Some(rng.below(20)))
    } else if roll < 86 {
        let sql = if rng.chance(50) {
            format!("UPDATE {table} SET status = $1, updated_at = now() WHERE id = $2")
        } else {
            format!("INSERT INTO {table} (id, status, total) VALUES ($1, $2, $3)")
        };
        ("write", sql, Some(1))
    } else if roll < 98 {
        let sql = if rng.chance(50) { "BEGIN" } else { "COMMIT" };
        ("transaction", sql.to_owned(), None)
    } else if roll < 99 {
        let n = rng.below(1000);
        (
            "ddl",
            format!("ALTER TABLE {table} ADD COLUMN note_{n} text"),
            None,
        )
    } else {
        ("admin", format!("VACUUM (ANALYZE) {table}"), None)
    }
}

/// Writes the synthetic store at `path` (which must not exist), calling `progress` with
/// the connections written so far.
pub fn generate(
    path: &Path,
    shape: &Shape,
    mut progress: impl FnMut(u64),
) -> Result<Written, RecordError> {
    let mut conn = Connection::open(path).map_err(|source| RecordError::Open {
        path: path.to_owned(),
        source,
    })?;
    schema::apply(&conn)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut rng = Rng(shape.seed.max(1));
    let now = super::now_ms();
    let span = (shape.days.max(1) * 86_400_000) as i64;
    let per_job = (shape.connections / shape.jobs.max(1)).max(1);
    // Four in five connections are PostgreSQL sessions, which hold every statement.
    let sessions = (shape.connections * 4 / 5).max(1);
    let per_session = shape.statements as f64 / sessions as f64;
    let mut written = Written::default();
    let mut lists = JsonLists::default();
    let mut statement_budget = 0.0f64;
    let mut tx = conn.transaction()?;
    let mut in_tx = 0u64;
    for j in 0..shape.jobs {
        let started = now - span + (span / shape.jobs.max(1) as i64) * j as i64;
        let repository = format!("acme-{}/service-{}", j % 20, j % 200);
        let identity = Identity {
            provider: rng
                .pick(&["github", "github", "github", "gitlab", "cron"])
                .to_owned(),
            repository,
            workflow: rng.pick(&WORKFLOWS).to_owned(),
            job: rng.pick(&JOBS).to_owned(),
            run_id: (100_000 + j).to_string(),
            run_attempt: "1".to_owned(),
            git_ref: "refs/heads/main".to_owned(),
            actor: format!("user{}", rng.below(300)),
            environment: rng.pick(&ENVIRONMENTS).to_owned(),
            ..Identity::default()
        };
        let job = JobRecord {
            id: id(started, j),
            name: Some(identity.job.clone()),
            labels: Default::default(),
            cgroup_id: 10_000 + j,
            cgroup_path: format!("/sys/fs/cgroup/tollgate/job-{j}"),
            owner_pid: 1000,
            owner_start: 1,
            owner_uid: 0,
            started_at: started,
            ended_at: None,
            exit: None,
            end_reason: None,
            kind: JobKind::Run,
            assurance: if rng.chance(70) {
                Assurance::OidcVerified
            } else {
                Assurance::HostAsserted
            },
            identity,
            origin_cgroup: None,
        };
        insert_job(&tx, &job)?;
        written.jobs += 1;
        let job_id: Arc<str> = Arc::from(job.id.as_str());
        for c in 0..per_job {
            let n = j * per_job + c;
            let at = started + (c as i64) * 600;
            let postgres = rng.chance(80);
            let denied = rng.chance(3);
            let mut session = ConnectionRecord {
                id: id(at, n),
                job_id: Some(job.id.clone()),
                attributed: true,
                pid: Some(2000 + rng.below(30_000) as u32),
                uid: Some(0),
                gid: Some(0),
                comm: Some(if postgres { "psql" } else { "curl" }.to_owned()),
                source: "127.0.0.1:40000".to_owned(),
                destination: Some(format!("10.0.{}.{}:5432", rng.below(4), rng.below(250))),
                decision: if denied {
                    DecisionLabel::Deny
                } else {
                    DecisionLabel::Allow
                },
                target: Some(if postgres {
                    format!("pg-{}", rng.below(10))
                } else {
                    format!("api-{}", rng.below(6))
                }),
                reason: if denied {
                    "no policy permits it".to_owned()
                } else {
                    "permitted by connect-ci".to_owned()
                },
                policy_ids: if denied {
                    Vec::new()
                } else {
                    vec!["connect-ci".to_owned()]
                },
                bytes_up: rng.below(100_000),
                bytes_down: rng.below(1_000_000),
                started_at: at,
                connect_us: Some(300 + rng.below(700)),
                ended_at: Some(at + 50 + rng.below(500) as i64),
                assurance: Some(job.assurance),
                path: Some("proxy".to_owned()),
                protocol: postgres.then(|| "postgres".to_owned()),
                db_user: postgres.then(|| "app".to_owned()),
                db_name: postgres.then(|| "app".to_owned()),
                ..ConnectionRecord::default()
            };
            if !postgres || denied {
                session.bytes_up = 0;
            }
            insert_connection(&tx, &session)?;
            written.connections += 1;
            if postgres && !denied {
                statement_budget += per_session;
                let count = statement_budget.floor() as u64;
                statement_budget -= count as f64;
                let connection_id: Arc<str> = Arc::from(session.id.as_str());
                for seq in 0..count {
                    let table = rng.pick(&TABLES);
                    let (kind, sql, rows) = statement_text(&mut rng, table);
                    let refused = kind == "write" && rng.chance(2);
                    let statement = StatementRecord {
                        id: id(at, n * 1000 + seq),
                        connection_id: connection_id.clone(),
                        job_id: Some(job_id.clone()),
                        seq: seq + 1,
                        started_at: at + 2 * seq as i64,
                        started: None,
                        duration_us: Some(100 + rng.below(5_000)),
                        protocol: Cow::Borrowed("extended"),
                        database: Arc::from("app"),
                        user: Arc::from("app"),
                        sql: Arc::from(sql.as_str()),
                        params: Vec::new(),
                        kind: Cow::Borrowed(kind),
                        tables: if kind == "transaction" {
                            Arc::from(Vec::new())
                        } else {
                            Arc::from(vec![table.to_owned()])
                        },
                        functions: Arc::from(Vec::new()),
                        decision: if refused {
                            DecisionLabel::Deny
                        } else {
                            DecisionLabel::Allow
                        },
                        policy_ids: Arc::from(vec![
                            if refused { "no-prod-writes" } else { "sql-ci" }.to_owned(),
                        ]),
                        reason: Arc::from(if refused {
                            "forbidden by no-prod-writes"
                        } else {
                            "permitted by sql-ci"
                        }),
                        rows: if refused { None } else { rows },
                        sqlstate: refused.then(|| "42501".to_owned()),
                        error: refused.then(|| "denied by policy".to_owned()),
                        approval: None,
                        opened: false,
                        http: None,
                        mcp: None,
                    };
                    insert(&tx, &statement, &mut lists)?;
                    written.statements += 1;
                    in_tx += 1;
                }
            }
            in_tx += 1;
            if in_tx >= 50_000 {
                tx.commit()?;
                tx = conn.transaction()?;
                in_tx = 0;
                progress(written.connections);
            }
        }
    }
    tx.commit()?;
    progress(written.connections);
    Ok(written)
}

/// The COPY text form of a field: backslash, tab and line ends escaped.
fn copy_field(out: &mut impl std::io::Write, text: &str) -> std::io::Result<()> {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        let escaped = match c {
            '\\' => "\\\\",
            '\t' => "\\t",
            '\n' => "\\n",
            '\r' => "\\r",
            _ => continue,
        };
        out.write_all(&text.as_bytes()[start..i])?;
        out.write_all(escaped.as_bytes())?;
        start = i + c.len_utf8();
    }
    out.write_all(&text.as_bytes()[start..])
}

/// Writes the store's jobs, connections and statements as the central store's records
/// of `host`, in the text form of `COPY tollgate.records (host, seq, at, kind,
/// record_id, body, prev, hash) FROM STDIN`: a central store of the same shape for the
/// console's benchmark. The chain's hashes are zero (it does not verify). Returns the
/// records written.
pub fn copy_records(
    store: &Path,
    host: &str,
    out: &mut impl std::io::Write,
) -> Result<u64, RecordError> {
    let store = super::Store::open(store)?;
    let zero = format!("\\\\x{}", "0".repeat(64));
    let mut seq = 0u64;
    let mut record = |out: &mut dyn std::io::Write, at: i64, kind: &str, id: &str, body: String| {
        seq += 1;
        let mut line = Vec::with_capacity(body.len() + 256);
        copy_field(&mut line, host)?;
        write!(line, "\t{seq}\t{at}\t{kind}\t")?;
        copy_field(&mut line, id)?;
        line.push(b'\t');
        copy_field(&mut line, &body)?;
        writeln!(line, "\t{zero}\t{zero}")?;
        out.write_all(&line)
    };
    let ids = |sql: &str| -> Result<Vec<String>, RecordError> {
        let mut stmt = store.conn().prepare(sql)?;
        let ids = stmt
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    };
    for id in ids("SELECT id FROM jobs ORDER BY started_at")? {
        if let Some(job) = store.job(&id)? {
            let body = serde_json::to_string(&job).unwrap_or_default();
            record(out, job.started_at, "job", &job.id, body)?;
        }
    }
    for id in ids("SELECT id FROM connections ORDER BY started_at")? {
        let Some(session) = store.connection_exact(&id)? else {
            continue;
        };
        let body = serde_json::to_string(&session).unwrap_or_default();
        record(out, session.started_at, "connection", &session.id, body)?;
        for statement in store.statements(&id)? {
            let body = serde_json::to_string(&statement).unwrap_or_default();
            record(out, statement.started_at, "statement", &statement.id, body)?;
        }
    }
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::copy_field;

    #[test]
    fn copy_fields_escape_backslashes_tabs_and_line_ends() {
        let mut out = Vec::new();
        copy_field(&mut out, "{\"sql\":\"a\\\"b\"}\tx\ny\rz é").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"sql\":\"a\\\\\"b\"}\\tx\\ny\\rz é"
        );
    }
}
