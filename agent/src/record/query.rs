//! Read access to the recording store, for the control socket and the agent's restart.
use std::path::Path;

use rusqlite::{Connection, Row, params};

use super::{
    AuditRecord, ConnectionRecord, DnsRecord, EventRecord, JobExit, JobRecord, RecordError,
    StatementRecord,
};
use crate::{
    identity::{Assurance, Identity},
    jobs::JobKind,
};

/// A read-only connection to the recording store.
pub struct Store {
    conn: Connection,
}

pub(super) const CONNECTION_COLUMNS: &str = "c.id, c.job_id, c.attributed, c.pid, c.tid, c.uid, c.gid, \
    c.comm, c.exe, c.cgroup_id, c.source, c.destination, c.decision, c.reason, c.policy_ids, \
    c.bytes_up, c.bytes_down, c.started_at, c.connect_us, c.ended_at, c.error, j.name, j.labels, \
    c.target, j.identity, c.assurance, c.protocol, c.db_user, c.db_name, c.application_name, \
    c.client_tls, c.server_tls, c.hostname, c.path, c.sni";
pub(super) const CONNECTION_FROM: &str = "connections c LEFT JOIN jobs j ON j.id = c.job_id";
const JOB_COLUMNS: &str = "id, name, labels, cgroup_id, cgroup_path, owner_pid, owner_start, \
    owner_uid, started_at, ended_at, exit_code, exit_signal, end_reason, kind, identity, assurance, \
    origin_cgroup";

impl Store {
    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Opens the database read-only (the writer must have created it).
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let conn = Connection::open_with_flags(
            path,
            // URI names let a search attach the text index read-only.
            super::text_index::open_flags(),
        )
        .map_err(|source| RecordError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    /// The newest connections first, optionally of one job.
    pub fn list_connections(
        &self,
        job: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ConnectionRecord>, RecordError> {
        let mut rows = Vec::new();
        if let Some(job) = job {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM {CONNECTION_FROM} WHERE c.job_id = ?1 \
                 ORDER BY c.started_at DESC, c.id DESC LIMIT ?2"
            ))?;
            for row in stmt.query_map(params![job, limit], connection_from_row)? {
                rows.push(row?);
            }
        } else {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {CONNECTION_COLUMNS} FROM {CONNECTION_FROM} \
                 ORDER BY c.started_at DESC, c.id DESC LIMIT ?1"
            ))?;
            for row in stmt.query_map(params![limit], connection_from_row)? {
                rows.push(row?);
            }
        }
        Ok(rows)
    }

    /// One connection by id or unique id prefix.
    pub fn connection(&self, id: &str) -> Result<ConnectionRecord, RecordError> {
        let pattern = format!("{}%", id.replace(['%', '_'], ""));
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {CONNECTION_COLUMNS} FROM {CONNECTION_FROM} WHERE c.id LIKE ?1 LIMIT 2"
        ))?;
        let mut found: Vec<ConnectionRecord> = stmt
            .query_map(params![pattern], connection_from_row)?
            .collect::<Result<_, _>>()?;
        let mut session = match found.len() {
            0 => return Err(RecordError::NoSuchSession(id.to_owned())),
            1 => found.remove(0),
            _ => return Err(RecordError::AmbiguousSession(id.to_owned())),
        };
        session.statements = self.statements(&session.id)?;
        Ok(session)
    }

    /// A session's statements, in order.
    pub fn statements(&self, connection_id: &str) -> Result<Vec<StatementRecord>, RecordError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, connection_id, job_id, seq, started_at, duration_us, protocol, database, \
             db_user, sql, params, kind, tables, functions, decision, policy_ids, reason, rows, \
             sqlstate, error, approval, http, mcp FROM statements WHERE connection_id = ?1 ORDER BY \
             seq",
        )?;
        let rows = stmt
            .query_map(params![connection_id], |row| {
                Ok(StatementRecord {
                    id: row.get(0)?,
                    connection_id: row.get(1)?,
                    job_id: row.get(2)?,
                    seq: row.get::<_, i64>(3)? as u64,
                    started_at: row.get(4)?,
                    started: None,
                    duration_us: row.get::<_, Option<i64>>(5)?.map(|d| d as u64),
                    protocol: row.get(6)?,
                    database: row.get(7)?,
                    user: row.get(8)?,
                    sql: row.get(9)?,
                    params: json_or_default(row.get(10)?),
                    kind: row.get(11)?,
                    tables: json_or_default(row.get(12)?),
                    functions: json_or_default(row.get(13)?),
                    decision: row.get(14)?,
                    policy_ids: json_or_default(row.get(15)?),
                    reason: row.get(16)?,
                    rows: row.get::<_, Option<i64>>(17)?.map(|r| r as u64),
                    sqlstate: row.get(18)?,
                    error: row.get(19)?,
                    approval: row.get(20)?,
                    opened: false,
                    http: row
                        .get::<_, Option<String>>(21)?
                        .and_then(|text| serde_json::from_str(&text).ok()),
                    mcp: row
                        .get::<_, Option<String>>(22)?
                        .and_then(|text| serde_json::from_str(&text).ok()),
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRecord>, RecordError> {
        use rusqlite::OptionalExtension as _;
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id],
                job_from_row,
            )
            .optional()?)
    }

    /// Jobs with no end recorded: candidates for re-adoption after a restart.
    pub fn open_jobs(&self) -> Result<Vec<JobRecord>, RecordError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE ended_at IS NULL ORDER BY started_at"
        ))?;
        let jobs = stmt
            .query_map([], job_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(jobs)
    }

    /// Approval requests, newest first (only pending ones if `pending`).
    pub fn approvals(
        &self,
        pending: bool,
        limit: u32,
    ) -> Result<Vec<crate::approvals::ApprovalRecord>, RecordError> {
        Ok(super::approvals::list(&self.conn, pending, limit)?)
    }

    /// One approval request.
    pub fn approval(
        &self,
        id: &str,
    ) -> Result<Option<crate::approvals::ApprovalRecord>, RecordError> {
        Ok(super::approvals::get(&self.conn, id)?)
    }

    /// The audit trail, newest first.
    pub fn audit(&self, limit: u32) -> Result<Vec<AuditRecord>, RecordError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, action, outcome, job_id, caller_pid, caller_uid, detail FROM audit \
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit], |row| {
                Ok(AuditRecord {
                    at: row.get(0)?,
                    action: row.get(1)?,
                    outcome: row.get(2)?,
                    job_id: row.get(3)?,
                    caller_pid: row.get(4)?,
                    caller_uid: row.get(5)?,
                    detail: row.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Kernel events, newest first (optionally of one job).
    pub fn events(
        &self,
        job_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<EventRecord>, RecordError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, kind, job_id, cgroup_id, pid, tid, uid, gid, comm, exe, action, detail \
             FROM events WHERE (?1 IS NULL OR job_id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![job_id, limit], |row| {
                Ok(EventRecord {
                    at: row.get(0)?,
                    kind: row.get(1)?,
                    job_id: row.get(2)?,
                    cgroup_id: row.get::<_, i64>(3)? as u64,
                    pid: row.get(4)?,
                    tid: row.get(5)?,
                    uid: row.get(6)?,
                    gid: row.get(7)?,
                    comm: row.get(8)?,
                    exe: row.get(9)?,
                    action: row.get(10)?,
                    detail: row.get(11)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// DNS queries, newest first (optionally of one job).
    pub fn dns(&self, job_id: Option<&str>, limit: u32) -> Result<Vec<DnsRecord>, RecordError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, job_id, cgroup_id, pid, uid, comm, transport, server, name, qtype, \
             rcode, answers, decision, policy_ids, reason, cached, duration_us, error \
             FROM dns_queries WHERE (?1 IS NULL OR job_id = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let json_list = |text: String| serde_json::from_str(&text).unwrap_or_default();
        let rows = stmt
            .query_map(params![job_id, limit], |row| {
                Ok(DnsRecord {
                    at: row.get(0)?,
                    job_id: row.get(1)?,
                    cgroup_id: row.get::<_, Option<i64>>(2)?.map(|c| c as u64),
                    pid: row.get(3)?,
                    uid: row.get(4)?,
                    comm: row.get(5)?,
                    transport: row.get(6)?,
                    server: row.get(7)?,
                    name: row.get(8)?,
                    qtype: row.get(9)?,
                    rcode: row.get(10)?,
                    answers: json_list(row.get(11)?),
                    decision: row.get(12)?,
                    policy_ids: json_list(row.get(13)?),
                    reason: row.get(14)?,
                    cached: row.get(15)?,
                    duration_us: row.get::<_, i64>(16)? as u64,
                    error: row.get(17)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Connections recorded per decision.
    #[cfg(test)]
    pub fn count_by_decision(&self) -> Result<Vec<(String, u64)>, RecordError> {
        let mut stmt = self
            .conn
            .prepare("SELECT decision, COUNT(*) FROM connections GROUP BY decision")?;
        let counts = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))?
            .collect::<Result<_, _>>()?;
        Ok(counts)
    }
}

pub(super) fn connection_from_row(row: &Row<'_>) -> rusqlite::Result<ConnectionRecord> {
    let policy_ids: String = row.get(14)?;
    let labels: Option<String> = row.get(22)?;
    Ok(ConnectionRecord {
        job_name: row.get(21)?,
        job_labels: labels
            .and_then(|labels| serde_json::from_str(&labels).ok())
            .unwrap_or_default(),
        id: row.get(0)?,
        job_id: row.get(1)?,
        attributed: row.get(2)?,
        pid: row.get(3)?,
        tid: row.get(4)?,
        uid: row.get(5)?,
        gid: row.get(6)?,
        comm: row.get(7)?,
        exe: row.get(8)?,
        cgroup_id: row.get::<_, Option<i64>>(9)?.map(|id| id as u64),
        source: row.get(10)?,
        destination: row.get(11)?,
        decision: row.get(12)?,
        reason: row.get(13)?,
        policy_ids: serde_json::from_str(&policy_ids).unwrap_or_default(),
        bytes_up: row.get::<_, i64>(15)? as u64,
        bytes_down: row.get::<_, i64>(16)? as u64,
        started_at: row.get(17)?,
        connect_us: row.get::<_, Option<i64>>(18)?.map(|us| us as u64),
        ended_at: row.get(19)?,
        error: row.get(20)?,
        target: row.get(23)?,
        job_identity: json_or_default(row.get(24)?),
        assurance: row
            .get::<_, Option<String>>(25)?
            .and_then(|a| Assurance::parse(&a)),
        protocol: row.get(26)?,
        db_user: row.get(27)?,
        db_name: row.get(28)?,
        application_name: row.get(29)?,
        client_tls: row.get(30)?,
        server_tls: row.get(31)?,
        hostname: row.get(32)?,
        path: row.get(33)?,
        sni: row.get(34)?,
        statements: Vec::new(),
    })
}

fn json_or_default<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> T {
    text.and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let labels: String = row.get(2)?;
    let exit = match (
        row.get::<_, Option<i32>>(10)?,
        row.get::<_, Option<i32>>(11)?,
    ) {
        (Some(code), _) => Some(JobExit::Code(code)),
        (None, Some(signal)) => Some(JobExit::Signal(signal)),
        (None, None) => None,
    };
    Ok(JobRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        labels: serde_json::from_str(&labels).unwrap_or_default(),
        cgroup_id: row.get::<_, i64>(3)? as u64,
        cgroup_path: row.get(4)?,
        owner_pid: row.get(5)?,
        owner_start: row.get::<_, i64>(6)? as u64,
        owner_uid: row.get(7)?,
        started_at: row.get(8)?,
        ended_at: row.get(9)?,
        exit,
        end_reason: row.get(12)?,
        kind: JobKind::parse(&row.get::<_, Option<String>>(13)?.unwrap_or_default()),
        identity: json_or_default::<Identity>(row.get(14)?),
        assurance: row
            .get::<_, Option<String>>(15)?
            .and_then(|a| Assurance::parse(&a))
            .unwrap_or_default(),
        origin_cgroup: row.get(16)?,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        metrics::Metrics,
        record::{RecordEvent, writer},
    };

    fn job(id: &str) -> JobRecord {
        JobRecord {
            id: id.to_owned(),
            name: Some("build".to_owned()),
            labels: [("repo".to_owned(), "acme/api".to_owned())].into(),
            cgroup_id: 42,
            cgroup_path: "/sys/fs/cgroup/tollgate/job-1".to_owned(),
            owner_pid: 10,
            owner_start: 99,
            owner_uid: 0,
            started_at: 1000,
            ended_at: None,
            exit: None,
            end_reason: None,
            kind: JobKind::Run,
            identity: Identity {
                provider: "github".to_owned(),
                run_id: "42".to_owned(),
                ..Default::default()
            },
            assurance: Assurance::HostAsserted,
            origin_cgroup: None,
        }
    }

    #[test]
    fn writer_and_store_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/rec.db");
        let metrics = Arc::new(Metrics::new());
        let (recorder, handle) = writer::spawn(
            &path,
            crate::record::writer::WriterOptions {
                capacity: 16,
                batch_size: 4,
                flush_interval: std::time::Duration::from_millis(5),
                ..Default::default()
            },
            metrics.record.clone(),
        )
        .unwrap();
        recorder.record(RecordEvent::JobStarted(job("j1")));
        recorder.record(RecordEvent::JobStarted(job("j2")));
        for i in 0..10 {
            recorder.record(RecordEvent::Connection(Box::new(ConnectionRecord {
                id: format!("c{i:02}"),
                job_id: Some("j1".to_owned()),
                attributed: true,
                pid: Some(7),
                source: "127.0.0.1:5000".to_owned(),
                destination: Some("127.0.0.1:5432".to_owned()),
                decision: crate::record::DecisionLabel::Allow,
                reason: "default".to_owned(),
                policy_ids: vec!["p1".to_owned()],
                bytes_up: 10,
                bytes_down: 20,
                started_at: 2000 + i,
                ended_at: Some(3000 + i),
                ..Default::default()
            })));
        }
        recorder.record(RecordEvent::JobEnded {
            id: "j1".to_owned(),
            ended_at: 5000,
            exit: Some(JobExit::Signal(9)),
            reason: "exited".to_owned(),
        });
        drop(recorder);
        handle.shutdown();
        assert_eq!(metrics.record.written.get(), 13);
        assert_eq!(metrics.record.queue_depth.get(), 0);

        let store = Store::open(&path).unwrap();
        let list = store.list_connections(Some("j1"), 5).unwrap();
        assert_eq!(list.len(), 5);
        assert_eq!(list[0].id, "c09", "newest first");
        assert_eq!(list[0].policy_ids, vec!["p1".to_owned()]);
        assert_eq!(
            list[0].job_labels["repo"], "acme/api",
            "labels joined from the job"
        );
        assert_eq!(list[0].job_name.as_deref(), Some("build"));
        assert!(store.list_connections(Some("j2"), 5).unwrap().is_empty());
        assert_eq!(store.connection("c03").unwrap().started_at, 2003);
        assert!(matches!(
            store.connection("c0"),
            Err(RecordError::AmbiguousSession(_))
        ));
        assert!(matches!(
            store.connection("zz"),
            Err(RecordError::NoSuchSession(_))
        ));
        let j1 = store.job("j1").unwrap().unwrap();
        assert_eq!(j1.exit, Some(JobExit::Signal(9)));
        assert_eq!(j1.labels["repo"], "acme/api");
        assert_eq!(j1.identity.run_id, "42");
        assert_eq!(
            list[0].job_identity.run_id, "42",
            "identity joined from the job"
        );
        let open: Vec<String> = store
            .open_jobs()
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        assert_eq!(open, vec!["j2".to_owned()]);
        assert_eq!(
            store.count_by_decision().unwrap(),
            vec![("allow".to_owned(), 10)]
        );
    }
}
