//! The central store's schema, created and migrated by `tollgate central migrate`, and
//! versioned: an agent ships only to a store at the version it was built for.
//!
//! One table holds every host's record chain (`records`), partitioned by month of the
//! time each record was chained; views give each kind of record its columns. Checkpoints,
//! enrolled host keys and the log of prunes sit beside it.
use tokio_postgres::{Client, GenericClient};

use super::CentralError;

/// The schema version this build writes and reads.
pub const VERSION: i32 = 2;

/// Each migration, in order: migration N takes the store from version N-1 to N.
const MIGRATIONS: [&str; 2] = [V1, V2];

/// Typed tables of the newest connections, statements and jobs, kept by a trigger.
const V2: &str = include_str!("schema/v2.sql");

const V1: &str = "
CREATE SCHEMA IF NOT EXISTS tollgate;
CREATE TABLE tollgate.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE tollgate.hosts (
    host        text PRIMARY KEY,
    public_key  bytea NOT NULL,
    enrolled_at timestamptz NOT NULL DEFAULT now(),
    enrolled_by text NOT NULL
);
CREATE TABLE tollgate.records (
    host       text NOT NULL,
    seq        bigint NOT NULL,
    at         bigint NOT NULL,
    kind       text NOT NULL,
    record_id  text NOT NULL,
    body       text NOT NULL,
    prev       bytea NOT NULL,
    hash       bytea NOT NULL,
    shipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, seq, at)
) PARTITION BY RANGE (at);
CREATE INDEX records_by_record ON tollgate.records (kind, record_id);
CREATE INDEX records_by_time ON tollgate.records (at);
CREATE TABLE tollgate.checkpoints (
    host      text NOT NULL,
    seq       bigint NOT NULL,
    at        bigint NOT NULL,
    records   bigint NOT NULL,
    head      bytea NOT NULL,
    signature bytea NOT NULL,
    PRIMARY KEY (host, seq)
);
CREATE TABLE tollgate.prunes (
    host      text NOT NULL,
    upto      bigint NOT NULL,
    head      bytea NOT NULL,
    before_at bigint NOT NULL,
    pruned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, upto)
);
-- Approval requests of every host, and decisions made on any host for them (signed by
-- the deciding host's key; the asking host applies them and writes the outcome).
CREATE TABLE tollgate.approval_requests (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    state      text NOT NULL,
    asked_at   bigint NOT NULL,
    record     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX approval_requests_pending ON tollgate.approval_requests (host)
    WHERE state = 'pending';
CREATE TABLE tollgate.approval_decisions (
    id         bigserial PRIMARY KEY,
    request_id text NOT NULL REFERENCES tollgate.approval_requests (id),
    by_host    text NOT NULL,
    decider    text NOT NULL,
    verdict    text NOT NULL,
    at         bigint NOT NULL,
    signature  bytea NOT NULL,
    outcome    text,
    outcome_at timestamptz
);
CREATE INDEX approval_decisions_open ON tollgate.approval_decisions (request_id)
    WHERE outcome IS NULL;
-- Grants with a duration's scope, in force on every host (signed by the granting host).
CREATE TABLE tollgate.approval_grants (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    record     text NOT NULL,
    expires_at bigint NOT NULL,
    signature  bytea NOT NULL,
    revoked    boolean NOT NULL DEFAULT false
);
-- The newest version of each record, with its columns.
CREATE VIEW tollgate.latest AS
    SELECT DISTINCT ON (host, kind, record_id) host, seq, at, kind, record_id, body::jsonb AS body
    FROM tollgate.records WHERE record_id <> ''
    ORDER BY host, kind, record_id, seq DESC;
CREATE VIEW tollgate.connections AS
    SELECT host, record_id AS id, body->>'job_id' AS job_id, body->>'decision' AS decision,
           body->>'destination' AS destination, body->>'target' AS target,
           body->>'protocol' AS protocol, (body->>'started_at')::bigint AS started_at,
           (body->>'ended_at')::bigint AS ended_at, (body->>'bytes_up')::bigint AS bytes_up,
           (body->>'bytes_down')::bigint AS bytes_down, body->>'comm' AS comm, body
    FROM tollgate.latest WHERE kind = 'connection';
CREATE VIEW tollgate.statements AS
    SELECT host, record_id AS id, body->>'connection_id' AS connection_id,
           body->>'job_id' AS job_id, (body->>'seq')::bigint AS seq,
           (body->>'started_at')::bigint AS started_at, body->>'sql' AS sql,
           body->>'kind' AS statement_kind, body->>'decision' AS decision, body
    FROM tollgate.latest WHERE kind = 'statement';
CREATE VIEW tollgate.jobs AS
    SELECT host, record_id AS id, body->>'name' AS name, body->'labels' AS labels,
           (body->>'started_at')::bigint AS started_at, body
    FROM tollgate.latest WHERE kind = 'job';
CREATE VIEW tollgate.approvals AS
    SELECT host, record_id AS id, body->>'state' AS state, body->>'job_id' AS job_id, body
    FROM tollgate.latest WHERE kind = 'approval';
";

/// The store's schema version (0: none).
pub async fn version(client: &impl GenericClient) -> Result<i32, CentralError> {
    let exists = client
        .query_one("SELECT to_regclass('tollgate.meta') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_opt(
            "SELECT value FROM tollgate.meta WHERE key = 'schema_version'",
            &[],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, String>(0).parse().ok())
        .unwrap_or(0))
}

/// Refuses a store whose schema is not this build's.
pub async fn check(client: &Client) -> Result<(), CentralError> {
    match version(client).await? {
        VERSION => Ok(()),
        0 => Err(CentralError::NoSchema),
        found => Err(CentralError::SchemaVersion {
            found,
            expected: VERSION,
        }),
    }
}

/// Migrates the store to [`VERSION`], one transaction per step, under an advisory lock
/// (two hosts migrating at once take turns). Returns the versions before and after.
pub async fn migrate(client: &mut Client) -> Result<(i32, i32), CentralError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(7469677461746531)", &[])
        .await?;
    let before = version(&tx).await?;
    if before > VERSION {
        return Err(CentralError::SchemaVersion {
            found: before,
            expected: VERSION,
        });
    }
    for step in before..VERSION {
        tx.batch_execute(MIGRATIONS[step as usize]).await?;
        tx.execute(
            "INSERT INTO tollgate.meta (key, value) VALUES ('schema_version', $1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&(step + 1).to_string()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((before, VERSION))
}

/// Milliseconds of the first instant of the month holding `at_ms`, and of the next month.
pub fn month_of(at_ms: i64) -> (i64, i64, String) {
    let at = time::OffsetDateTime::from_unix_timestamp(at_ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let first = |year: i32, month: time::Month| {
        time::Date::from_calendar_date(year, month, 1)
            .map(|d| d.midnight().assume_utc().unix_timestamp() * 1000)
            .unwrap_or(0)
    };
    let start = first(at.year(), at.month());
    let (ny, nm) = if at.month() == time::Month::December {
        (at.year() + 1, time::Month::January)
    } else {
        (at.year(), at.month().next())
    };
    let end = first(ny, nm);
    let name = format!("records_{:04}_{:02}", at.year(), u8::from(at.month()));
    (start, end, name)
}

/// Creates the partition for the month holding `at_ms` if it is missing (two hosts
/// creating it at once: one wins, the other finds it).
pub async fn ensure_partition(client: &Client, at_ms: i64) -> Result<(), CentralError> {
    let (start, end, name) = month_of(at_ms);
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS tollgate.{name} PARTITION OF tollgate.records \
         FOR VALUES FROM ({start}) TO ({end})"
    );
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(()),
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_TABLE)
                || error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_bound_partitions() {
        // 2026-12-06T12:00:00Z
        let (start, end, name) = month_of(1_796_558_400_000);
        assert_eq!(name, "records_2026_12");
        assert_eq!(start, 1_796_083_200_000); // 2026-12-01
        assert_eq!(end, 1_798_761_600_000); // 2027-01-01
        let (start2, _, name2) = month_of(end);
        assert_eq!(name2, "records_2027_01");
        assert_eq!(start2, end);
    }
}
