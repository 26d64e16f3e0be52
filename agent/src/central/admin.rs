//! What an operator does to the central store: enrol a host's key, prune old records,
//! and verify every host's chain there.
use futures_util::{StreamExt as _, pin_mut};
use tokio_postgres::Client;

use super::{CentralError, schema};
use crate::record::{
    chain::{Entry, to_hash},
    checkpoint::Checkpoint,
    verify::{Report, Start, Verifier},
};

/// What enrolling did.
#[derive(Debug, PartialEq, Eq)]
pub enum Enrolled {
    New,
    Already,
    Replaced,
}

/// Registers `host`'s public key. A host enrolled with another key is refused unless
/// `replace` (its old checkpoints then no longer verify).
pub async fn enroll(
    client: &Client,
    host: &str,
    public: &[u8],
    by: &str,
    replace: bool,
) -> Result<Enrolled, CentralError> {
    schema::check(client).await?;
    let existing = client
        .query_opt(
            "SELECT public_key FROM tollgate.hosts WHERE host = $1",
            &[&host],
        )
        .await?
        .map(|row| row.get::<_, Vec<u8>>(0));
    match existing {
        Some(key) if key == public => Ok(Enrolled::Already),
        Some(_) if !replace => Err(CentralError::Url(format!(
            "host {host:?} is enrolled with another key; pass --replace to enrol this one (its \
             earlier checkpoints will no longer verify)"
        ))),
        existing => {
            client
                .execute(
                    "INSERT INTO tollgate.hosts (host, public_key, enrolled_by) VALUES ($1, $2, $3) \
                     ON CONFLICT (host) DO UPDATE SET public_key = EXCLUDED.public_key, \
                     enrolled_by = EXCLUDED.enrolled_by, enrolled_at = now()",
                    &[&host, &public, &by],
                )
                .await?;
            Ok(if existing.is_some() {
                Enrolled::Replaced
            } else {
                Enrolled::New
            })
        }
    }
}

/// What a prune removed, per host.
#[derive(Debug, serde::Serialize)]
pub struct Pruned {
    pub host: String,
    /// The last position removed.
    pub upto: i64,
    pub records: u64,
}

/// Removes every host's records chained before `before_ms`, keeping for each the
/// position and hash it was pruned at (so its chain still verifies from there), and
/// drops the monthly partitions left empty.
pub async fn prune(client: &mut Client, before_ms: i64) -> Result<Vec<Pruned>, CentralError> {
    schema::check(client).await?;
    let tx = client.transaction().await?;
    // One prune at a time across the fleet (agents' schedules and the command).
    tx.execute("SELECT pg_advisory_xact_lock(7469677461746532)", &[])
        .await?;
    let heads = tx
        .query(
            "SELECT DISTINCT ON (host) host, seq, hash FROM tollgate.records WHERE at < $1 \
             ORDER BY host, seq DESC",
            &[&before_ms],
        )
        .await?;
    let mut pruned = Vec::new();
    for row in heads {
        let host: String = row.get(0);
        let upto: i64 = row.get(1);
        let head: Vec<u8> = row.get(2);
        let records = tx
            .execute(
                "DELETE FROM tollgate.records WHERE host = $1 AND seq <= $2",
                &[&host, &upto],
            )
            .await?;
        tx.execute(
            "DELETE FROM tollgate.checkpoints WHERE host = $1 AND records <= $2",
            &[&host, &upto],
        )
        .await?;
        // The typed rows whose newest record is gone (schema version 2).
        for table in ["connection_rows", "statement_rows", "job_rows"] {
            tx.execute(
                &format!("DELETE FROM tollgate.{table} WHERE host = $1 AND chain_seq <= $2"),
                &[&host, &upto],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO tollgate.prunes (host, upto, head, before_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[&host, &upto, &head, &before_ms],
        )
        .await?;
        pruned.push(Pruned {
            host,
            upto,
            records,
        });
    }
    // Monthly partitions wholly before the cutoff are empty now: dropped.
    let partitions = tx
        .query(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'tollgate.records'::regclass",
            &[],
        )
        .await?;
    for row in partitions {
        let name: String = row.get(0);
        let bound: String = row.get(1);
        // FOR VALUES FROM ('a') TO ('b')
        let end = bound.rsplit("TO (").next().and_then(|s| {
            s.trim_end_matches(')')
                .trim_matches('\'')
                .parse::<i64>()
                .ok()
        });
        if end.is_some_and(|end| end <= before_ms) {
            tx.batch_execute(&format!("DROP TABLE IF EXISTS tollgate.{name}"))
                .await?;
        }
    }
    tx.commit().await?;
    Ok(pruned)
}

/// Verifies the chain of each enrolled host (or only `only`), from `since_ms` when given.
pub async fn verify(
    client: &Client,
    only: Option<&str>,
    since_ms: Option<i64>,
) -> Result<Vec<Report>, CentralError> {
    schema::check(client).await?;
    let mut hosts: Vec<(String, Option<Vec<u8>>)> = client
        .query(
            "SELECT h.host, k.public_key FROM (SELECT host FROM tollgate.hosts UNION \
             SELECT DISTINCT host FROM tollgate.checkpoints) h \
             LEFT JOIN tollgate.hosts k ON k.host = h.host ORDER BY h.host",
            &[],
        )
        .await?
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if let Some(only) = only {
        hosts.retain(|(h, _)| h == only);
        if hosts.is_empty() {
            hosts.push((only.to_owned(), None));
        }
    }
    let mut reports = Vec::new();
    for (host, key) in hosts {
        reports.push(verify_host(client, &host, key.as_deref(), since_ms).await?);
    }
    Ok(reports)
}

async fn verify_host(
    client: &Client,
    host: &str,
    key: Option<&[u8]>,
    since_ms: Option<i64>,
) -> Result<Report, CentralError> {
    let checkpoints: Vec<Checkpoint> = client
        .query(
            "SELECT seq, at, host, records, head, signature FROM tollgate.checkpoints \
             WHERE host = $1 AND at >= $2 ORDER BY seq",
            &[&host, &since_ms.unwrap_or(i64::MIN)],
        )
        .await?
        .into_iter()
        .map(|row| Checkpoint {
            seq: row.get(0),
            at: row.get(1),
            host: row.get(2),
            records: row.get(3),
            head: to_hash(&row.get::<_, Vec<u8>>(4)).unwrap_or_default(),
            signature: row.get(5),
        })
        .collect();
    let start = match since_ms {
        Some(_) => Start::Anywhere,
        None => client
            .query_opt(
                "SELECT upto, head FROM tollgate.prunes WHERE host = $1 ORDER BY upto DESC LIMIT 1",
                &[&host],
            )
            .await?
            .map_or(Start::Genesis, |row| Start::Pruned {
                upto: row.get(0),
                head: to_hash(&row.get::<_, Vec<u8>>(1)).unwrap_or_default(),
            }),
    };
    // A host without an enrolled key has nothing its checkpoints could verify against:
    // an empty key fails every signature.
    let mut verifier = Verifier::new(host, key.unwrap_or_default(), checkpoints, start);
    if !verifier.failed() {
        let since = since_ms.unwrap_or(i64::MIN);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&host, &since];
        let rows = client
            .query_raw(
                "SELECT seq, at, kind, record_id, body, prev, hash FROM tollgate.records \
                 WHERE host = $1 AND at >= $2 ORDER BY seq",
                params,
            )
            .await?;
        pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row?;
            let entry = Entry {
                seq: row.get(0),
                at: row.get(1),
                kind: row.get(2),
                record_id: row.get(3),
                body: row.get(4),
                prev: to_hash(&row.get::<_, Vec<u8>>(5)).unwrap_or_default(),
                hash: to_hash(&row.get::<_, Vec<u8>>(6)).unwrap_or_default(),
            };
            if !verifier.entry(&entry) {
                break;
            }
        }
    }
    let mut report = verifier.finish();
    if key.is_none() && report.failure.is_none() {
        report.failure = Some(crate::record::verify::Failure {
            kind: crate::record::verify::FailureKind::BadSignature,
            seq: 0,
            record: "host key".to_owned(),
            detail: format!(
                "host {host:?} is not enrolled: run `tollgate central enroll-host` on it"
            ),
        });
    }
    Ok(report)
}
