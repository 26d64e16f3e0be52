//! The conformance harness's tokio-postgres client: runs statements one by one, in the
//! extended protocol with binary results and in the simple protocol with text results,
//! and prints what it saw of each, one JSON object a line.
//!
//! Input (stdin, JSON): {"dsn", "statements": [...]}.
use std::io::Read as _;

use serde_json::{Value, json};
use tokio_postgres::{
    NoTls, SimpleQueryMessage,
    types::{FromSql, Type},
};

/// Any value, as the bytes the server sent.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn error(e: &tokio_postgres::Error) -> Value {
    match e.as_db_error() {
        Some(db) => json!({
            "severity": db.severity(),
            "code": db.code().code(),
            "message": db.message(),
            "detail": db.detail(),
            "hint": db.hint(),
            "where": db.where_(),
            "schema": db.schema(),
            "table": db.table(),
            "column": db.column(),
            "datatype": db.datatype(),
            "constraint": db.constraint(),
            "file": db.file(),
            "line": db.line(),
            "routine": db.routine(),
        }),
        None => json!({ "client": e.to_string() }),
    }
}

/// Types made by a script's setup have OIDs that differ between databases.
fn oid(ty: &Type) -> Value {
    if ty.oid() >= 16384 {
        json!("user")
    } else {
        json!(ty.oid())
    }
}

async fn run(job: Value) -> Result<(), tokio_postgres::Error> {
    let dsn = job["dsn"].as_str().unwrap_or_default();
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(connection);
    for sql in job["statements"].as_array().into_iter().flatten() {
        let sql = sql.as_str().unwrap_or_default();
        let head = sql.trim_start().to_ascii_uppercase();
        let mut seen = json!({ "sql": sql });
        if head.starts_with("COPY") {
            if head.contains("TO STDOUT") {
                match client.copy_out(sql).await {
                    Ok(stream) => {
                        use futures_util::TryStreamExt as _;
                        let chunks: Result<Vec<_>, _> = stream.try_collect().await;
                        match chunks {
                            Ok(chunks) => seen["copy"] = json!(hex(&chunks.concat())),
                            Err(e) => seen["error"] = error(&e),
                        }
                    }
                    Err(e) => seen["error"] = error(&e),
                }
            } else {
                seen["skipped"] = json!("COPY FROM STDIN is psql's");
            }
        } else {
            match client.query(sql, &[]).await {
                Ok(rows) => {
                    if let Some(first) = rows.first() {
                        seen["columns"] = first
                            .columns()
                            .iter()
                            .map(|c| json!([c.name(), oid(c.type_())]))
                            .collect();
                    }
                    let rows: Vec<Value> = rows
                        .iter()
                        .map(|row| {
                            (0..row.len())
                                .map(|i| match row.try_get::<_, Option<Raw>>(i) {
                                    Ok(Some(Raw(bytes))) => json!(hex(&bytes)),
                                    Ok(None) => Value::Null,
                                    Err(e) => json!(format!("error: {e}")),
                                })
                                .collect()
                        })
                        .collect();
                    seen["binary"] = json!(rows);
                }
                Err(e) => seen["binary_error"] = error(&e),
            }
            match client.simple_query(sql).await {
                Ok(messages) => {
                    let mut text = Vec::new();
                    for message in messages {
                        match message {
                            SimpleQueryMessage::Row(row) => text.push(json!(
                                (0..row.len()).map(|i| row.get(i)).collect::<Vec<_>>()
                            )),
                            SimpleQueryMessage::CommandComplete(n) => {
                                text.push(json!({ "complete": n }))
                            }
                            _ => {}
                        }
                    }
                    seen["text"] = json!(text);
                }
                Err(e) => seen["text_error"] = error(&e),
            }
        }
        println!("{seen}");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("conformance_client: stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let job: Value = match serde_json::from_str(&input) {
        Ok(job) => job,
        Err(e) => {
            eprintln!("conformance_client: bad input: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("conformance_client: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(job)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance_client: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
