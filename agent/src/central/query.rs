//! Reading the fleet's records back from the central store: sessions (with their
//! statements) and audit entries, across hosts or for one.
use tokio_postgres::Client;

use super::{CentralError, schema};
use crate::{
    approvals::ApprovalRecord,
    record::{AuditRecord, ConnectionRecord, JobRecord, StatementRecord},
};

/// A record and the host it came from.
#[derive(Debug, serde::Serialize)]
pub struct Hosted<T> {
    pub host: String,
    #[serde(flatten)]
    pub record: T,
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, CentralError> {
    serde_json::from_str(body)
        .map_err(|e| CentralError::Url(format!("a central record does not parse: {e}")))
}

/// Rows of (host, record JSON).
fn hosted<T: serde::de::DeserializeOwned>(
    rows: &[tokio_postgres::Row],
) -> Result<Vec<Hosted<T>>, CentralError> {
    rows.iter()
        .map(|row| {
            Ok(Hosted {
                host: row.get(0),
                record: parse(row.get::<_, &str>(1))?,
            })
        })
        .collect()
}

/// Puts the job's name, labels and identity on a session (as the local store does).
pub fn with_job(
    mut session: ConnectionRecord,
    job: Option<&str>,
) -> Result<ConnectionRecord, CentralError> {
    if let Some(job) = job {
        let job: JobRecord = parse(job)?;
        session.job_name = job.name;
        session.job_labels = job.labels;
        session.job_identity = job.identity;
    }
    Ok(session)
}

/// Sessions newest first, across hosts or on `host`, of `job` if given.
pub async fn sessions(
    client: &Client,
    host: Option<&str>,
    job: Option<&str>,
    limit: u32,
) -> Result<Vec<Hosted<ConnectionRecord>>, CentralError> {
    schema::check(client).await?;
    let rows = client
        .query(
            "SELECT c.host, c.body::text, j.body::text FROM tollgate.connections c \
             LEFT JOIN tollgate.jobs j ON j.host = c.host AND j.id = c.job_id \
             WHERE ($1::text IS NULL OR c.host = $1) AND ($2::text IS NULL OR c.job_id = $2) \
             ORDER BY c.started_at DESC, c.id DESC LIMIT $3",
            &[&host, &job, &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let session = parse(row.get::<_, &str>(1))?;
            Ok(Hosted {
                host: row.get(0),
                record: with_job(session, row.get::<_, Option<&str>>(2))?,
            })
        })
        .collect()
}

/// One session by id or a unique prefix of it, with its statements.
pub async fn session(
    client: &Client,
    host: Option<&str>,
    id: &str,
) -> Result<Hosted<ConnectionRecord>, CentralError> {
    schema::check(client).await?;
    let pattern = format!("{}%", id.replace(['%', '_', '\\'], ""));
    let rows = client
        .query(
            "SELECT c.host, c.body::text, j.body::text FROM tollgate.connections c \
             LEFT JOIN tollgate.jobs j ON j.host = c.host AND j.id = c.job_id \
             WHERE c.id LIKE $1 AND ($2::text IS NULL OR c.host = $2) LIMIT 2",
            &[&pattern, &host],
        )
        .await?;
    let row = match rows.as_slice() {
        [row] => row,
        [] => return Err(CentralError::Url(format!("no session matches `{id}`"))),
        _ => {
            return Err(CentralError::Url(format!(
                "`{id}` matches more than one session; give more characters (or --host)"
            )));
        }
    };
    let host: String = row.get(0);
    let mut session = with_job(parse(row.get::<_, &str>(1))?, row.get::<_, Option<&str>>(2))?;
    let statements = client
        .query(
            "SELECT body::text FROM tollgate.statements WHERE host = $1 AND connection_id = $2 \
             ORDER BY seq",
            &[&host, &session.id],
        )
        .await?;
    session.statements = statements
        .iter()
        .map(|row| parse::<StatementRecord>(row.get::<_, &str>(0)))
        .collect::<Result<_, _>>()?;
    Ok(Hosted {
        host,
        record: session,
    })
}

/// Audit entries newest first.
pub async fn audit(
    client: &Client,
    host: Option<&str>,
    limit: u32,
) -> Result<Vec<Hosted<AuditRecord>>, CentralError> {
    schema::check(client).await?;
    let rows = client
        .query(
            "SELECT host, body FROM tollgate.records WHERE kind = 'audit' \
             AND ($1::text IS NULL OR host = $1) ORDER BY at DESC, seq DESC LIMIT $2",
            &[&host, &i64::from(limit)],
        )
        .await?;
    hosted(&rows)
}

/// Approval requests of every host (or `host`'s), newest first.
pub async fn approvals(
    client: &Client,
    host: Option<&str>,
    pending: bool,
    limit: u32,
) -> Result<Vec<Hosted<ApprovalRecord>>, CentralError> {
    schema::check(client).await?;
    let rows = client
        .query(
            "SELECT host, record FROM tollgate.approval_requests \
             WHERE ($1::text IS NULL OR host = $1) AND (NOT $2 OR state = 'pending') \
             ORDER BY asked_at DESC, id DESC LIMIT $3",
            &[&host, &pending, &i64::from(limit)],
        )
        .await?;
    hosted(&rows)
}

/// One approval request, by id.
pub async fn approval(client: &Client, id: &str) -> Result<Hosted<ApprovalRecord>, CentralError> {
    schema::check(client).await?;
    let row = client
        .query_opt(
            "SELECT host, record FROM tollgate.approval_requests WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| CentralError::Url(format!("no approval request {id}")))?;
    Ok(Hosted {
        host: row.get(0),
        record: parse(row.get::<_, &str>(1))?,
    })
}
