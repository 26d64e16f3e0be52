-- Version 2: the newest version of each connection, statement and job in tables of
-- their own, kept by a trigger as records arrive, with the indexes the review console
-- searches by. The views keep their columns and read these tables instead of
-- DISTINCT ON over every record, so a store of millions of sessions answers a page in
-- milliseconds. Text search uses trigram indexes where pg_trgm can be created.
CREATE TABLE tollgate.connection_rows (
    host        text NOT NULL,
    id          text NOT NULL,
    chain_seq   bigint NOT NULL,
    job_id      text,
    started_at  bigint,
    target      text,
    protocol    text,
    decision    text,
    body        jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX connection_rows_by_start ON tollgate.connection_rows (started_at DESC, id DESC);
CREATE INDEX connection_rows_by_job ON tollgate.connection_rows (host, job_id, started_at);
CREATE TABLE tollgate.statement_rows (
    host           text NOT NULL,
    id             text NOT NULL,
    chain_seq      bigint NOT NULL,
    connection_id  text,
    job_id         text,
    seq            bigint,
    started_at     bigint,
    sql            text,
    tables         text,
    statement_kind text,
    decision       text,
    body           jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX statement_rows_by_connection ON tollgate.statement_rows (host, connection_id, seq);
CREATE TABLE tollgate.job_rows (
    host        text NOT NULL,
    id          text NOT NULL,
    chain_seq   bigint NOT NULL,
    started_at  bigint,
    body        jsonb NOT NULL,
    PRIMARY KEY (host, id)
);
CREATE INDEX job_rows_by_repository ON tollgate.job_rows ((body->'identity'->>'repository'));
CREATE INDEX job_rows_by_run ON tollgate.job_rows ((body->'identity'->>'run_id'));
CREATE INDEX job_rows_by_actor ON tollgate.job_rows ((body->'identity'->>'actor'));
CREATE INDEX job_rows_by_workflow ON tollgate.job_rows ((body->'identity'->>'workflow'));
CREATE INDEX job_rows_by_environment ON tollgate.job_rows ((body->'identity'->>'environment'));

-- A batch of records at once (a statement-level trigger and its transition table): the
-- newest version of each connection, statement and job goes to its typed table, unless
-- the table has a newer one.
CREATE FUNCTION tollgate.records_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO tollgate.connection_rows AS r
        SELECT DISTINCT ON (host, record_id) host, record_id, seq, b->>'job_id',
               (b->>'started_at')::bigint, b->>'target', b->>'protocol', b->>'decision', b
        FROM (SELECT host, record_id, seq, body::jsonb AS b FROM new_records
              WHERE kind = 'connection' AND record_id <> '') n
        ORDER BY host, record_id, seq DESC
    ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
        job_id = excluded.job_id, started_at = excluded.started_at,
        target = excluded.target, protocol = excluded.protocol,
        decision = excluded.decision, body = excluded.body
    WHERE r.chain_seq < excluded.chain_seq;
    INSERT INTO tollgate.statement_rows AS r
        SELECT DISTINCT ON (host, record_id) host, record_id, seq, b->>'connection_id',
               b->>'job_id', (b->>'seq')::bigint, (b->>'started_at')::bigint, b->>'sql',
               b->>'tables', b->>'kind', b->>'decision', b
        FROM (SELECT host, record_id, seq, body::jsonb AS b FROM new_records
              WHERE kind = 'statement' AND record_id <> '') n
        ORDER BY host, record_id, seq DESC
    ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
        connection_id = excluded.connection_id, job_id = excluded.job_id,
        seq = excluded.seq, started_at = excluded.started_at, sql = excluded.sql,
        tables = excluded.tables, statement_kind = excluded.statement_kind,
        decision = excluded.decision, body = excluded.body
    WHERE r.chain_seq < excluded.chain_seq;
    INSERT INTO tollgate.job_rows AS r
        SELECT DISTINCT ON (host, record_id) host, record_id, seq,
               (b->>'started_at')::bigint, b
        FROM (SELECT host, record_id, seq, body::jsonb AS b FROM new_records
              WHERE kind = 'job' AND record_id <> '') n
        ORDER BY host, record_id, seq DESC
    ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
        started_at = excluded.started_at, body = excluded.body
    WHERE r.chain_seq < excluded.chain_seq;
    RETURN NULL;
END $$;
CREATE TRIGGER records_kept AFTER INSERT ON tollgate.records
    REFERENCING NEW TABLE AS new_records
    FOR EACH STATEMENT EXECUTE FUNCTION tollgate.records_kept();

-- What version 1 already holds (`latest` has the newest version of each record).
INSERT INTO tollgate.connection_rows
    SELECT host, record_id, seq, body->>'job_id', (body->>'started_at')::bigint,
           body->>'target', body->>'protocol', body->>'decision', body
    FROM tollgate.latest WHERE kind = 'connection';
INSERT INTO tollgate.statement_rows
    SELECT host, record_id, seq, body->>'connection_id', body->>'job_id',
           (body->>'seq')::bigint, (body->>'started_at')::bigint, body->>'sql',
           body->>'tables', body->>'kind', body->>'decision', body
    FROM tollgate.latest WHERE kind = 'statement';
INSERT INTO tollgate.job_rows
    SELECT host, record_id, seq, (body->>'started_at')::bigint, body
    FROM tollgate.latest WHERE kind = 'job';

CREATE OR REPLACE VIEW tollgate.connections AS
    SELECT host, id, job_id, decision, body->>'destination' AS destination, target,
           protocol, started_at, (body->>'ended_at')::bigint AS ended_at,
           (body->>'bytes_up')::bigint AS bytes_up,
           (body->>'bytes_down')::bigint AS bytes_down, body->>'comm' AS comm, body
    FROM tollgate.connection_rows;
CREATE OR REPLACE VIEW tollgate.statements AS
    SELECT host, id, connection_id, job_id, seq, started_at, sql, statement_kind,
           decision, body, tables
    FROM tollgate.statement_rows;
CREATE OR REPLACE VIEW tollgate.jobs AS
    SELECT host, id, body->>'name' AS name, body->'labels' AS labels, started_at, body
    FROM tollgate.job_rows;

-- Trigram indexes for text search, where the extension can be created (it ships with
-- PostgreSQL's contrib and is trusted: a database owner may create it). Without it
-- the search scans.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available (%): text search scans', SQLERRM;
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX statement_rows_sql_text ON tollgate.statement_rows '
            'USING gin (sql gin_trgm_ops)';
        EXECUTE 'CREATE INDEX statement_rows_tables_text ON tollgate.statement_rows '
            'USING gin (tables gin_trgm_ops)';
    END IF;
END $$;
