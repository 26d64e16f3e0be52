"""The conformance harness's psycopg 3 client: runs statements one by one and prints
what it saw of each, one JSON object a line, so that a run through a Tollgate job can be
compared with a direct run.

Input (stdin, JSON): {"dsn", "encoding", "binary", "statements": [...]}.
"""
import json
import sys

import psycopg

DIAG = [
    "severity", "severity_nonlocalized", "sqlstate", "message_primary", "message_detail",
    "message_hint", "statement_position", "internal_position", "internal_query", "context",
    "schema_name", "table_name", "column_name", "datatype_name", "constraint_name",
    "source_file", "source_line", "source_function",
]


def diag(d):
    return {name: getattr(d, name) for name in DIAG if getattr(d, name) is not None}


def user_oid(oid):
    # Types created by the script's setup have OIDs that differ between databases.
    return "user" if oid >= 16384 else oid


job = json.load(sys.stdin)
out = sys.stdout
with psycopg.connect(job["dsn"], autocommit=True, client_encoding=job["encoding"]) as conn:
    notices = []
    conn.add_notice_handler(lambda d: notices.append(diag(d)))
    for sql in job["statements"]:
        seen = {"sql": sql}
        cur = conn.cursor(binary=job["binary"])
        try:
            head = sql.lstrip().upper()
            if head.startswith("COPY") and "TO STDOUT" in head:
                with cur.copy(sql) as copy:
                    seen["copy"] = repr(b"".join(bytes(chunk) for chunk in copy))
            elif head.startswith("COPY"):
                seen["skipped"] = "COPY FROM STDIN is psql's"
            else:
                cur.execute(sql)
                seen["status"] = cur.statusmessage
                if cur.description is not None:
                    seen["columns"] = [[c.name, user_oid(c.type_code)] for c in cur.description]
                    seen["rows"] = [repr(row) for row in cur.fetchall()]
        except psycopg.Error as error:
            seen["error"] = diag(error.diag)
        except Exception as error:  # a value psycopg cannot load is an outcome too
            seen["exception"] = f"{type(error).__name__}: {error}"
        if notices:
            seen["notices"] = notices
            notices = []
        out.write(json.dumps(seen, ensure_ascii=False, sort_keys=True) + "\n")
