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

CREATE FUNCTION tollgate.keep_row(p_host text, p_seq bigint, p_kind text, p_id text, p_body jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_kind = 'connection' THEN
        INSERT INTO tollgate.connection_rows AS r VALUES (
            p_host, p_id, p_seq, p_body->>'job_id', (p_body->>'started_at')::bigint,
            p_body->>'target', p_body->>'protocol', p_body->>'decision', p_body)
        ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
            job_id = excluded.job_id, started_at = excluded.started_at,
            target = excluded.target, protocol = excluded.protocol,
            decision = excluded.decision, body = excluded.body
        WHERE r.chain_seq < excluded.chain_seq;
    ELSIF p_kind = 'statement' THEN
        INSERT INTO tollgate.statement_rows AS r VALUES (
            p_host, p_id, p_seq, p_body->>'connection_id', p_body->>'job_id',
            (p_body->>'seq')::bigint, (p_body->>'started_at')::bigint, p_body->>'sql',
            p_body->>'tables', p_body->>'kind', p_body->>'decision', p_body)
        ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
            connection_id = excluded.connection_id, job_id = excluded.job_id,
            seq = excluded.seq, started_at = excluded.started_at, sql = excluded.sql,
            tables = excluded.tables, statement_kind = excluded.statement_kind,
            decision = excluded.decision, body = excluded.body
        WHERE r.chain_seq < excluded.chain_seq;
    ELSIF p_kind = 'job' THEN
        INSERT INTO tollgate.job_rows AS r VALUES (
            p_host, p_id, p_seq, (p_body->>'started_at')::bigint, p_body)
        ON CONFLICT (host, id) DO UPDATE SET chain_seq = excluded.chain_seq,
            started_at = excluded.started_at, body = excluded.body
        WHERE r.chain_seq < excluded.chain_seq;
    END IF;
END $$;

CREATE FUNCTION tollgate.records_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.record_id <> '' AND NEW.kind IN ('connection', 'statement', 'job') THEN
        PERFORM tollgate.keep_row(NEW.host, NEW.seq, NEW.kind, NEW.record_id, NEW.body::jsonb);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER records_kept AFTER INSERT ON tollgate.records
    FOR EACH ROW EXECUTE FUNCTION tollgate.records_kept();

-- What version 1 already holds.
SELECT tollgate.keep_row(host, seq, kind, record_id, body)
    FROM tollgate.latest WHERE kind IN ('connection', 'statement', 'job');

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
