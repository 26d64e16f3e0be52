"""psycopg (libpq 17+) over TLS, with the negotiation given (`direct` or `postgres`).

Runs a query and a CREATE TABLE (which policy may deny), and prints one JSON object:
what the server answered, whether TLS was in use, and the SQLSTATE of a refusal.
"""
import json
import sys

import psycopg

dsn, negotiation, table = sys.argv[1], sys.argv[2], sys.argv[3]
seen = {"libpq": psycopg.pq.version()}
with psycopg.connect(f"{dsn} sslmode=require sslnegotiation={negotiation}", autocommit=True) as conn:
    seen["ssl_in_use"] = conn.pgconn.ssl_in_use
    cur = conn.cursor()
    cur.execute("SELECT 'hello ' || %s AS greeting, 6 * 7 AS answer", (negotiation,))
    seen["row"] = list(cur.fetchone())
    try:
        cur.execute(f"CREATE TABLE {table} (id int)")
        seen["ddl"] = "allowed"
        cur.execute(f"DROP TABLE {table}")
    except psycopg.errors.InsufficientPrivilege as error:
        seen["ddl"] = error.sqlstate
    cur.execute("SELECT 'after'")
    seen["after"] = cur.fetchone()[0]
print(json.dumps(seen, sort_keys=True))
