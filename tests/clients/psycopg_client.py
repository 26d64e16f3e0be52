"""psycopg 3 against PostgreSQL through Tollgate (run inside a Tollgate job).

Exercises server-side parameters, executemany, pipeline mode, COPY in and out, binary
results, and a statement denied by policy in the extended protocol (the session
recovers). Prints one JSON object with what it saw.
"""
import json
import sys

import psycopg

dsn = sys.argv[1]
seen = {}

with psycopg.connect(dsn, autocommit=False) as conn:
    cur = conn.cursor()
    # Server-side parameters (extended protocol, Bind values).
    cur.execute("SELECT %s::int + 1, %s::text", (41, "forty-two"))
    seen["params"] = list(cur.fetchone())

    # DDL is denied by policy: 42501, then the transaction is failed until rollback.
    try:
        # prepare=True: the extended protocol (Parse of a named statement).
        cur.execute("CREATE TABLE tollgate_psycopg (id int, email text)", prepare=True)
        seen["ddl"] = "allowed"
    except psycopg.errors.InsufficientPrivilege as error:
        seen["ddl"] = error.sqlstate
        seen["ddl_message"] = str(error).splitlines()[0]
    try:
        cur.execute("SELECT 1")
        seen["after_denial"] = "ran"
    except psycopg.errors.InFailedSqlTransaction as error:
        seen["after_denial"] = error.sqlstate
    conn.rollback()
    cur.execute("SELECT 'recovered'")
    seen["recovered"] = cur.fetchone()[0]

    # executemany (pipelined by psycopg) into a table made outside the job.
    rows = [(i, f"user{i}@example.com") for i in range(1, 6)]
    cur.executemany("INSERT INTO tollgate_psycopg_rows (id, email) VALUES (%s, %s)", rows)
    conn.commit()

    # An explicit pipeline: several statements before one Sync.
    with conn.pipeline():
        cur.execute("SELECT count(*) FROM tollgate_psycopg_rows")
        cur.execute("UPDATE tollgate_psycopg_rows SET id = id WHERE id > %s", (2,))
        cur.execute("SELECT max(id) FROM tollgate_psycopg_rows")
    seen["pipeline_max"] = cur.fetchone()[0]
    conn.commit()

    # COPY in and out.
    with cur.copy("COPY tollgate_psycopg_rows (id, email) FROM STDIN") as copy:
        copy.write_row((6, "copied@example.net"))
        copy.write_row((7, "plain text"))
    conn.commit()
    out = []
    with cur.copy("COPY (SELECT id, email FROM tollgate_psycopg_rows ORDER BY id) TO STDOUT") as copy:
        for row in copy.rows():
            out.append(list(row))
    seen["copy_out"] = out

    # Binary results: an int and a text column.
    cur.execute("SELECT id, email FROM tollgate_psycopg_rows WHERE id = %s", (1,), binary=True)
    seen["binary"] = list(cur.fetchone())
    # Text results of the same row.
    cur.execute("SELECT id, email FROM tollgate_psycopg_rows WHERE id = %s", (1,))
    seen["text"] = list(cur.fetchone())
    conn.commit()

print(json.dumps(seen))
