//! tokio-postgres against PostgreSQL through Tollgate (run inside a Tollgate job):
//! prepared statements, typed parameters and results, and a statement denied by policy.
//! Prints one JSON object with what it saw.
//!
//! With `--across-reload`: prepares an INSERT and executes it, prints `prepared`, waits
//! for a line on stdin (the test reloads the policy meanwhile), executes the same
//! prepared statement again, and prints what that execution and a later read gave.
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::args()
        .nth(1)
        .ok_or("usage: tokio_pg_client DSN [--across-reload]")?;
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    if std::env::args().nth(2).as_deref() == Some("--across-reload") {
        across_reload(&client).await?;
        drop(client);
        let _ = driver.await;
        return Ok(());
    }

    let add = client.prepare("SELECT $1::int4 + 1, $2::text").await?;
    let mut sums = Vec::new();
    for n in [1i32, 41] {
        let row = client.query_one(&add, &[&n, &"x"]).await?;
        sums.push(row.get::<_, i32>(0));
    }
    let insert = client
        .prepare("INSERT INTO tollgate_tokio_rows (id, email) VALUES ($1, $2)")
        .await?;
    let mut inserted = 0;
    for id in 1i32..=3 {
        inserted += client
            .execute(&insert, &[&id, &format!("row{id}@example.com")])
            .await?;
    }
    let rows = client
        .query("SELECT id, email FROM tollgate_tokio_rows ORDER BY id", &[])
        .await?;
    let emails: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let denied = match client.prepare("DROP TABLE tollgate_tokio_rows").await {
        Ok(_) => "allowed".to_owned(),
        Err(error) => error
            .code()
            .map_or_else(|| error.to_string(), |c| c.code().to_owned()),
    };
    // The connection is still usable.
    let after: i32 = client.query_one(&add, &[&99i32, &"y"]).await?.get(0);
    drop(client);
    let _ = driver.await;
    println!(
        "{}",
        json!({ "sums": sums, "inserted": inserted, "emails": emails, "denied": denied, "after": after })
    );
    Ok(())
}

async fn across_reload(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    let insert = client
        .prepare("INSERT INTO tollgate_tokio_rows (id, email) VALUES ($1, $2)")
        .await?;
    let before = client.execute(&insert, &[&1i32, &"a"]).await?;
    println!("prepared");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let after = match client.execute(&insert, &[&2i32, &"b"]).await {
        Ok(n) => n.to_string(),
        Err(error) => error
            .code()
            .map_or_else(|| error.to_string(), |c| c.code().to_owned()),
    };
    let rows: i64 = client
        .query_one("SELECT count(*) FROM tollgate_tokio_rows", &[])
        .await?
        .get(0);
    println!(
        "{}",
        json!({ "before": before, "after": after, "rows": rows })
    );
    Ok(())
}
