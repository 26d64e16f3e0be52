//! The fleet's central store: every host's sessions, jobs, approvals and audit trail,
//! read through one connection that is made again when it breaks.
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, types::ToSql};

use super::{Approvals, HostAudit, JOB_STATEMENTS, JobView, SourceError};
use crate::{
    approvals::ApprovalRecord,
    central::{CentralError, Target, query, query::Hosted, schema},
    record::{
        AuditRecord, ConnectionRecord, JobRecord, StatementRecord,
        search::{SessionQuery, SessionSummary, Where, contains_pattern},
        text_index,
    },
};

pub struct CentralSource {
    target: Target,
    client: Mutex<Option<Arc<Client>>>,
}

type Param = Box<dyn ToSql + Sync + Send>;

/// Statements sampled to tell a common text from a rare one.
const TEXT_SAMPLE: f64 = 2_000.0;

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, SourceError> {
    serde_json::from_str(body).map_err(|e| {
        SourceError::Central(CentralError::Url(format!(
            "a central record does not parse: {e}"
        )))
    })
}

/// Puts the job's name, labels and identity on a session, as the local store does.
fn with_job(session: ConnectionRecord, job: Option<&str>) -> Result<ConnectionRecord, SourceError> {
    Ok(query::with_job(session, job)?)
}

impl CentralSource {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            client: Mutex::new(None),
        }
    }

    pub fn shown(&self) -> &str {
        self.target.shown()
    }

    /// Whether more than [`text_index::COMMON`] statements hold a `LIKE` pattern, estimated
    /// from a sample of about [`TEXT_SAMPLE`] of them (`TABLESAMPLE SYSTEM`): counting
    /// them through the trigram indexes costs a bitmap of every match, which for a
    /// common word is slower than the search itself. Either answer gives the same
    /// sessions; it only picks the faster plan.
    async fn common_text(&self, pattern: &str) -> Result<bool, SourceError> {
        let client = self.client().await?;
        let rows: f64 = client
            .query_one(
                "SELECT reltuples::float8 FROM pg_class \
                 WHERE oid = 'tollgate.statement_rows'::regclass",
                &[],
            )
            .await
            .map_err(CentralError::from)?
            .get(0);
        // Small (or never analysed): the index plan is quick whatever the text.
        if rows < TEXT_SAMPLE * 2.0 {
            return Ok(false);
        }
        let percent = (TEXT_SAMPLE / rows * 100.0) as f32;
        let found: i64 = client
            .query_one(
                "SELECT count(*) FROM tollgate.statement_rows s TABLESAMPLE SYSTEM ($1) \
                 WHERE s.sql ILIKE $2 OR s.tables ILIKE $2",
                &[&percent, &pattern],
            )
            .await
            .map_err(CentralError::from)?
            .get(0);
        Ok(found as f64 * rows / TEXT_SAMPLE >= text_index::COMMON as f64)
    }

    /// The connection, made (and the schema checked) when there is none or it broke.
    async fn client(&self) -> Result<Arc<Client>, SourceError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref()
            && !client.is_closed()
        {
            return Ok(client.clone());
        }
        let client = Arc::new(self.target.connect().await?);
        schema::check(&client).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    pub async fn sessions(
        &self,
        host: Option<&str>,
        query: &SessionQuery,
    ) -> Result<Vec<Hosted<SessionSummary>>, SourceError> {
        let mut w: Where<Param> = Where::new('$');
        if let Some(host) = host {
            w.bind("c.host = {}", Box::new(host.to_owned()));
        }
        if let Some(from) = query.from {
            w.bind("c.started_at >= {}", Box::new(from));
        }
        if let Some(to) = query.to {
            w.bind("c.started_at < {}", Box::new(to));
        }
        if let Some(job) = &query.job_id {
            w.bind("c.job_id = {}", Box::new(job.clone()));
        }
        for (field, value) in &query.identity {
            // `field` is one of IDENTITY_FILTERS' names, never the caller's text.
            let clause = format!("j.body->'identity'->>'{field}' = {{}}");
            w.bind(&clause, Box::new(value.clone()));
        }
        if let Some(target) = &query.target {
            w.bind("c.target = {}", Box::new(target.clone()));
        }
        match query.protocol.as_deref() {
            Some("tcp") => w.clauses.push("c.protocol IS NULL".to_owned()),
            Some(protocol) => w.bind("c.protocol = {}", Box::new(protocol.to_owned())),
            None => {}
        }
        if let Some(decision) = &query.decision {
            w.bind("c.decision = {}", Box::new(decision.clone()));
        }
        if let Some(kind) = &query.statement_kind {
            w.bind(
                "EXISTS (SELECT 1 FROM tollgate.statements s WHERE s.host = c.host AND \
                 s.connection_id = c.id AND s.statement_kind = {})",
                Box::new(kind.clone()),
            );
        }
        if let Some(text) = &query.text {
            let pattern = contains_pattern(text);
            // The index's rule for what is too short to look up holds here too.
            let rare = text_index::phrase(text).is_some() && !self.common_text(&pattern).await?;
            let like = "(s.sql ILIKE {} OR s.tables ILIKE {})";
            if rare {
                // A rare text: its statements by the trigram indexes, then their sessions.
                w.bind(
                    &format!(
                        "(c.host, c.id) IN (SELECT s.host, s.connection_id \
                         FROM tollgate.statements s WHERE {like})"
                    ),
                    Box::new(pattern),
                );
            } else {
                // A common text: the newest sessions first find a page soonest.
                w.bind(
                    &format!(
                        "EXISTS (SELECT 1 FROM tollgate.statements s WHERE s.host = c.host \
                         AND s.connection_id = c.id AND {like})"
                    ),
                    Box::new(pattern),
                );
            }
        }
        if let Some((at, id)) = &query.after {
            w.after(Box::new(*at), Box::new(id.clone()));
        }
        let limit = w.value(Box::new(i64::from(query.limit)));
        let filter = w.sql();
        let sql = format!(
            "SELECT c.host, c.body::text, j.body::text, \
             (SELECT count(*) FROM tollgate.statements s WHERE s.host = c.host \
              AND s.connection_id = c.id), \
             (SELECT count(*) FROM tollgate.statements s WHERE s.host = c.host \
              AND s.connection_id = c.id AND s.decision IN ('deny', 'would_deny')) \
             FROM tollgate.connections c \
             LEFT JOIN tollgate.jobs j ON j.host = c.host AND j.id = c.job_id \
             {filter} ORDER BY c.started_at DESC, c.id DESC LIMIT {limit}"
        );
        let client = self.client().await?;
        let params: Vec<&(dyn ToSql + Sync)> = w
            .values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let rows = client
            .query(&sql, &params)
            .await
            .map_err(CentralError::from)?;
        rows.iter()
            .map(|row| {
                let session =
                    with_job(parse(row.get::<_, &str>(1))?, row.get::<_, Option<&str>>(2))?;
                Ok(Hosted {
                    host: row.get(0),
                    record: SessionSummary {
                        session,
                        statement_count: row.get::<_, i64>(3) as u64,
                        statements_denied: row.get::<_, i64>(4) as u64,
                    },
                })
            })
            .collect()
    }

    pub async fn session(
        &self,
        host: &str,
        id: &str,
    ) -> Result<Hosted<ConnectionRecord>, SourceError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT c.body::text, j.body::text FROM tollgate.connections c \
                 LEFT JOIN tollgate.jobs j ON j.host = c.host AND j.id = c.job_id \
                 WHERE c.host = $1 AND c.id = $2",
                &[&host, &id],
            )
            .await
            .map_err(CentralError::from)?
            .ok_or_else(|| SourceError::NotFound(format!("no session {id} on {host}")))?;
        let mut session = with_job(parse(row.get::<_, &str>(0))?, row.get::<_, Option<&str>>(1))?;
        session.statements = self.statements(&client, host, &session.id).await?;
        Ok(Hosted {
            host: host.to_owned(),
            record: session,
        })
    }

    async fn statements(
        &self,
        client: &Client,
        host: &str,
        connection_id: &str,
    ) -> Result<Vec<StatementRecord>, SourceError> {
        client
            .query(
                "SELECT body::text FROM tollgate.statements WHERE host = $1 \
                 AND connection_id = $2 ORDER BY seq",
                &[&host, &connection_id],
            )
            .await
            .map_err(CentralError::from)?
            .iter()
            .map(|row| parse(row.get::<_, &str>(0)))
            .collect()
    }

    /// Records of one kind of a job, from their chain bodies.
    async fn of_job<T: serde::de::DeserializeOwned>(
        &self,
        client: &Client,
        host: &str,
        kind: &str,
        job: &str,
    ) -> Result<Vec<T>, SourceError> {
        client
            .query(
                "SELECT body FROM (SELECT DISTINCT ON (CASE WHEN record_id = '' \
                 THEN seq::text ELSE record_id END) seq, body FROM tollgate.records \
                 WHERE host = $1 AND kind = $2 AND body::jsonb->>'job_id' = $3 \
                 ORDER BY CASE WHEN record_id = '' THEN seq::text ELSE record_id END, \
                 seq DESC) newest ORDER BY seq LIMIT 10000",
                &[&host, &kind, &job],
            )
            .await
            .map_err(CentralError::from)?
            .iter()
            .map(|row| parse(row.get::<_, &str>(0)))
            .collect()
    }

    pub async fn job(&self, host: &str, id: &str) -> Result<JobView, SourceError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT body::text FROM tollgate.jobs WHERE host = $1 AND id = $2",
                &[&host, &id],
            )
            .await
            .map_err(CentralError::from)?
            .ok_or_else(|| SourceError::NotFound(format!("no job {id} on {host}")))?;
        let mut job: JobRecord = parse(row.get::<_, &str>(0))?;
        // The job's end and its proven identity are records of their own.
        for update in client
            .query(
                "SELECT kind, body FROM tollgate.records WHERE host = $1 AND record_id = $2 \
                 AND kind IN ('job_ended', 'job_identity') ORDER BY seq",
                &[&host, &id],
            )
            .await
            .map_err(CentralError::from)?
        {
            let body: serde_json::Value = parse(update.get::<_, &str>(1))?;
            let field = |name: &str| body.get(name).cloned().unwrap_or_default();
            match update.get::<_, &str>(0) {
                "job_ended" => {
                    job.ended_at = field("ended_at").as_i64();
                    job.exit = serde_json::from_value(field("exit")).unwrap_or(None);
                    job.end_reason = field("reason").as_str().map(str::to_owned);
                }
                _ => {
                    if let Ok(identity) = serde_json::from_value(field("identity")) {
                        job.identity = identity;
                    }
                    if let Ok(assurance) = serde_json::from_value(field("assurance")) {
                        job.assurance = assurance;
                    }
                }
            }
        }
        let sessions: Vec<SessionSummary> = self
            .sessions(
                Some(host),
                &SessionQuery {
                    job_id: Some(id.to_owned()),
                    limit: 10_000,
                    ..SessionQuery::default()
                },
            )
            .await?
            .into_iter()
            .map(|h| h.record)
            .collect();
        let mut statements: Vec<StatementRecord> =
            self.of_job(&client, host, "statement", id).await?;
        statements.sort_by(|a, b| {
            (a.started_at, &a.connection_id, a.seq).cmp(&(b.started_at, &b.connection_id, b.seq))
        });
        let statements_truncated = statements.len() > JOB_STATEMENTS as usize;
        statements.truncate(JOB_STATEMENTS as usize);
        let mut approvals: Vec<ApprovalRecord> = self.of_job(&client, host, "approval", id).await?;
        approvals.sort_by(|a, b| (a.asked_at, &a.id).cmp(&(b.asked_at, &b.id)));
        Ok(JobView {
            host: host.to_owned(),
            sessions,
            statements,
            statements_truncated,
            dns: self.of_job(&client, host, "dns_query", id).await?,
            udp_flows: self.of_job(&client, host, "udp_flow", id).await?,
            unix: self.of_job(&client, host, "unix_connect", id).await?,
            events: self.of_job(&client, host, "event", id).await?,
            approvals,
            job,
        })
    }

    pub async fn approvals(&self, pending: bool, limit: u32) -> Result<Approvals, SourceError> {
        let client = self.client().await?;
        Ok(query::approvals(&client, None, pending, limit).await?)
    }

    pub async fn approval(&self, id: &str) -> Result<Hosted<ApprovalRecord>, SourceError> {
        let client = self.client().await?;
        query::approval(&client, id).await.map_err(|e| match e {
            CentralError::Url(why) => SourceError::NotFound(why),
            e => SourceError::Central(e),
        })
    }

    pub async fn approvals_version(&self) -> Result<String, SourceError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*)::text || ':' || coalesce(max(updated_at)::text, '') || ':' || \
                 count(*) FILTER (WHERE state = 'pending')::text \
                 FROM tollgate.approval_requests",
                &[],
            )
            .await
            .map_err(CentralError::from)?;
        Ok(row.get(0))
    }

    pub async fn audit(&self, limit: u32) -> Result<Vec<Hosted<AuditRecord>>, SourceError> {
        let client = self.client().await?;
        Ok(query::audit(&client, None, limit).await?)
    }

    pub async fn verify(&self) -> Result<Vec<HostAudit>, SourceError> {
        let client = self.client().await?;
        let reports = crate::central::admin::verify(&client, None, None).await?;
        let mut audits = Vec::new();
        for report in reports {
            let checkpoint_at = client
                .query_opt(
                    "SELECT at FROM tollgate.checkpoints WHERE host = $1 ORDER BY seq DESC LIMIT 1",
                    &[&report.host],
                )
                .await
                .map_err(CentralError::from)?
                .map(|row| row.get::<_, i64>(0));
            audits.push(HostAudit {
                report,
                checkpoint_at,
                error: None,
            });
        }
        Ok(audits)
    }

    pub async fn hosts(&self) -> Result<Vec<String>, SourceError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT host FROM tollgate.hosts UNION SELECT DISTINCT host FROM \
                 tollgate.checkpoints ORDER BY 1",
                &[],
            )
            .await
            .map_err(CentralError::from)?
            .iter()
            .map(|row| row.get(0))
            .collect())
    }
}
