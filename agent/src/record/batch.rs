//! One batch of records, written in one transaction: each record's row (inserted or
//! completed), and its entry in the chain.
use std::collections::HashSet;

use rusqlite::{Connection, params};

use super::{
    ConnectionRecord, JobExit, JobRecord, RecordEvent,
    chain::{self, Appender},
    now_ms, statements,
};

pub(super) fn write_batch(
    conn: &mut Connection,
    batch: &[RecordEvent],
    appender: &mut Appender,
) -> rusqlite::Result<()> {
    // A connection that opened and ended within this batch is written once, complete.
    let ended: HashSet<&str> = batch
        .iter()
        .filter_map(|event| match event {
            RecordEvent::Connection(c) => Some(c.id.as_str()),
            _ => None,
        })
        .collect();
    let tx = conn.transaction()?;
    let mut lists = statements::JsonLists::default();
    let at = now_ms();
    for event in batch {
        match event {
            RecordEvent::ConnectionOpened(c) if ended.contains(c.id.as_str()) => continue,
            RecordEvent::Flush(_) | RecordEvent::Committed(_) => continue,
            RecordEvent::StatementStarted(st) => statements::insert(&tx, st, &mut lists)?,
            RecordEvent::Statement(st) if st.opened => statements::complete(&tx, st, &mut lists)?,
            RecordEvent::Statement(st) => statements::insert(&tx, st, &mut lists)?,
            RecordEvent::UdpFlow(f) => super::flows::upsert(&tx, f)?,
            RecordEvent::Unix(u) => super::unix::upsert(&tx, u)?,
            RecordEvent::Dns(d) => {
                tx.prepare_cached(
                    "INSERT INTO dns_queries (at, job_id, cgroup_id, pid, uid, comm, transport, \
                     server, name, qtype, rcode, answers, decision, policy_ids, reason, cached, \
                     duration_us, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                     ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )?
                .execute(params![
                    d.at,
                    d.job_id,
                    d.cgroup_id.map(|c| c as i64),
                    d.pid,
                    d.uid,
                    d.comm,
                    d.transport,
                    d.server,
                    d.name,
                    d.qtype,
                    d.rcode,
                    to_json(&d.answers),
                    d.decision,
                    to_json(&d.policy_ids),
                    d.reason,
                    d.cached,
                    d.duration_us as i64,
                    d.error
                ])?;
            }
            RecordEvent::Event(e) => {
                tx.execute(
                    "INSERT INTO events (at, kind, job_id, cgroup_id, pid, tid, uid, gid, comm, \
                     exe, action, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                     ?12)",
                    params![
                        e.at,
                        e.kind,
                        e.job_id,
                        e.cgroup_id as i64,
                        e.pid,
                        e.tid,
                        e.uid,
                        e.gid,
                        e.comm,
                        e.exe,
                        e.action,
                        e.detail
                    ],
                )?;
            }
            RecordEvent::JobStarted(job) => insert_job(&tx, job)?,
            RecordEvent::JobEnded {
                id,
                ended_at,
                exit,
                reason,
            } => {
                let (code, signal) = match exit {
                    Some(JobExit::Code(code)) => (Some(*code), None),
                    Some(JobExit::Signal(signal)) => (None, Some(*signal)),
                    None => (None, None),
                };
                tx.execute(
                    "UPDATE jobs SET ended_at = ?2, exit_code = ?3, exit_signal = ?4, \
                     end_reason = ?5 WHERE id = ?1 AND ended_at IS NULL",
                    params![id, ended_at, code, signal, reason],
                )?;
            }
            RecordEvent::ConnectionOpened(conn) | RecordEvent::Connection(conn) => {
                insert_connection(&tx, conn)?
            }
            RecordEvent::JobIdentity {
                id,
                identity,
                assurance,
            } => {
                tx.execute(
                    "UPDATE jobs SET identity = ?2, assurance = ?3 WHERE id = ?1",
                    params![id, to_json(identity), assurance.as_str()],
                )?;
            }
            RecordEvent::Audit(a) => {
                tx.execute(
                    "INSERT INTO audit (at, action, outcome, job_id, caller_pid, caller_uid, \
                     detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        a.at,
                        a.action,
                        a.outcome,
                        a.job_id,
                        a.caller_pid,
                        a.caller_uid,
                        a.detail
                    ],
                )?;
            }
            RecordEvent::Approval(a) => super::approvals::upsert(&tx, a)?,
            RecordEvent::CloseDangling { at } => {
                let abandoned = super::approvals::abandon_pending(&tx, *at)?;
                if abandoned > 0 {
                    tracing::warn!(
                        abandoned,
                        "approval requests left pending by an agent stop are abandoned"
                    );
                }
                let closed = tx.execute(
                    "UPDATE connections SET ended_at = ?1, error = COALESCE(error, \
                     'the agent stopped before the connection ended') WHERE ended_at IS NULL",
                    params![at],
                )?;
                if closed > 0 {
                    tracing::warn!(
                        closed,
                        "closed the records of connections cut by an agent stop"
                    );
                }
            }
        }
        if let Some((kind, record_id, body)) = chain::content(event) {
            appender.append(&tx, at, kind, &record_id, &body)?;
        }
    }
    tx.commit()
}

pub(super) fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

pub(super) fn insert_job(tx: &rusqlite::Transaction<'_>, job: &JobRecord) -> rusqlite::Result<()> {
    let labels = to_json(&job.labels);
    tx.execute(
        "INSERT OR REPLACE INTO jobs (id, name, labels, cgroup_id, cgroup_path, owner_pid, \
         owner_start, owner_uid, started_at, kind, identity, assurance, origin_cgroup) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            job.id,
            job.name,
            labels,
            job.cgroup_id as i64,
            job.cgroup_path,
            job.owner_pid,
            job.owner_start as i64,
            job.owner_uid,
            job.started_at,
            job.kind.as_str(),
            to_json(&job.identity),
            job.assurance.as_str(),
            job.origin_cgroup,
        ],
    )?;
    Ok(())
}

pub(super) fn insert_connection(
    tx: &rusqlite::Transaction<'_>,
    c: &ConnectionRecord,
) -> rusqlite::Result<()> {
    let policy_ids = serde_json::to_string(&c.policy_ids).unwrap_or_else(|_| "[]".to_owned());
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO connections (id, job_id, attributed, pid, tid, uid, gid, comm, \
         exe, cgroup_id, source, destination, decision, reason, policy_ids, bytes_up, \
         bytes_down, started_at, connect_us, ended_at, error, target, assurance, protocol, db_user, \
         db_name, application_name, client_tls, server_tls, hostname, path, sni) VALUES (?1, ?2, \
         ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, \
         ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)",
    )?;
    stmt.execute(params![
        c.id,
        c.job_id,
        c.attributed,
        c.pid,
        c.tid,
        c.uid,
        c.gid,
        c.comm,
        c.exe,
        c.cgroup_id.map(|id| id as i64),
        c.source,
        c.destination,
        c.decision,
        c.reason,
        policy_ids,
        c.bytes_up as i64,
        c.bytes_down as i64,
        c.started_at,
        c.connect_us.map(|us| us as i64),
        c.ended_at,
        c.error,
        c.target,
        c.assurance.map(|a| a.as_str()),
        c.protocol,
        c.db_user,
        c.db_name,
        c.application_name,
        c.client_tls,
        c.server_tls,
        c.hostname,
        c.path,
        c.sni,
    ])?;
    Ok(())
}
