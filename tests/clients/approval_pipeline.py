"""A pipelined transaction whose middle statement waits for approval (psycopg 3,
extended protocol): prints what the client saw, as JSON."""
import json
import sys

import psycopg

dsn, table, column = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {}
with psycopg.connect(dsn, autocommit=True) as conn:
    try:
        with conn.transaction():
            with conn.pipeline():
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (1,))
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} int")
                conn.execute(f"INSERT INTO {table} VALUES (%s)", (2,))
        seen["result"] = "committed"
    except psycopg.Error as e:
        seen["result"] = "error"
        seen["sqlstate"] = e.sqlstate
        seen["message"] = str(e)
    seen["status"] = conn.info.transaction_status.name
    seen["rows"] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
print(json.dumps(seen))
