//! The review console's sessions page on a big store. `tollgate bench-store` writes
//! 1,000,000 connections and 10,000,000 statements (10,000 jobs over 30 days; four in
//! five connections are PostgreSQL sessions) once into target/bench/console/ (kept
//! between runs, remade when the shape changes); `tollgate console --store` serves it,
//! and each filter of the sessions page is asked [`ASKS`] times after one warm-up. The
//! report gives each filter's median and p90 and the median over all of them.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The store's shape: `tollgate bench-store` arguments.
const SHAPE: [(&str, &str); 4] = [
    ("--jobs", "10000"),
    ("--connections", "1000000"),
    ("--statements", "10000000"),
    ("--days", "30"),
];
/// Where the recording store's schema version is (`pub const VERSION: i64 = N;`).
const SCHEMA_SOURCE: &str = "agent/src/record/schema.rs";
const ASKS: usize = 11;
const PORT: u16 = 9481;
const DAY_MS: i64 = 86_400_000;

pub struct Timing {
    pub name: &'static str,
    pub query: String,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub rows: usize,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The agent's recording-store schema version, read from its source (so a new version
/// is never missed here).
fn schema_version(root: &Path) -> anyhow::Result<u32> {
    let path = root.join(SCHEMA_SOURCE);
    let text = fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("pub const VERSION: i64 = ")?
                .strip_suffix(';')?
                .parse()
                .ok()
        })
        .with_context(|| format!("{}: no `pub const VERSION: i64 = N;`", path.display()))
}

/// The store, made if missing or of another shape, and its shape.
fn store(root: &Path, bin: &Path) -> anyhow::Result<(std::path::PathBuf, String)> {
    let dir = root.join("target/bench/console");
    let db = dir.join("recordings.db");
    let stamp = dir.join("shape");
    // The store's schema is the agent's: a new schema version makes a new store.
    let schema = schema_version(root)?;
    let shape: String = SHAPE
        .iter()
        .map(|(k, v)| format!("{k} {v}\n"))
        .collect::<String>()
        + &format!("schema {schema}\n");
    if db.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == shape) {
        eprintln!(
            "xtask: bench: console: the store in {} is made",
            dir.display()
        );
        return Ok((db, shape));
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    eprintln!(
        "xtask: bench: console: writing the store (1,000,000 connections, 10,000,000 statements)"
    );
    let started = Instant::now();
    let status = Command::new(bin)
        .arg("bench-store")
        .arg("--out")
        .arg(&db)
        .args(SHAPE.iter().flat_map(|(k, v)| [*k, *v]))
        .status()
        .context("tollgate bench-store")?;
    if !status.success() {
        bail!("tollgate bench-store failed");
    }
    fs::write(&stamp, &shape)?;
    let size = fs::metadata(&db).map_or(0, |m| m.len());
    eprintln!(
        "xtask: bench: console: store written in {:.0} s, {:.2} GB",
        started.elapsed().as_secs_f64(),
        size as f64 / 1e9
    );
    Ok((db, shape))
}

/// The console's text index of the store `db` (agent/src/record/text_index.rs).
fn text_index_of(db: &Path) -> std::path::PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".text-index");
    db.with_file_name(name)
}

/// GET `path`: status, body.
fn get(path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", PORT))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn sessions(query: &str) -> anyhow::Result<(Duration, serde_json::Value)> {
    let started = Instant::now();
    let (status, body) = get(&format!("/api/v1/sessions?{query}"))?;
    let took = started.elapsed();
    if status != 200 {
        bail!("GET /api/v1/sessions?{query}: {status} {body}");
    }
    Ok((
        took,
        serde_json::from_str(&body).context("the sessions page")?,
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One source's timings: the console on this host's store, or on the central store.
pub struct Run {
    pub source: &'static str,
    pub timings: Vec<Timing>,
}

pub fn run(root: &Path, bin: &Path) -> anyhow::Result<Vec<Run>> {
    let (db, shape) = store(root, bin)?;
    let db_arg = db.to_string_lossy().into_owned();
    let local = serve(root, bin, &["--store", &db_arg])?;
    let fleet = super::fleet_store::FleetStore::start(root, bin, &db, &shape)?;
    let central = serve(root, bin, &["--central", &fleet.url()])?;
    drop(fleet);
    Ok(vec![
        Run {
            source: "this host's store (--store)",
            timings: local,
        },
        Run {
            source: "the central store (--central, PostgreSQL)",
            timings: central,
        },
    ])
}

/// Runs the console on `source` and times its sessions page.
fn serve(root: &Path, bin: &Path, source: &[&str]) -> anyhow::Result<Vec<Timing>> {
    let config = root.join("target/bench/console/console.toml");
    fs::write(
        &config,
        format!("[console]\nlisten = \"127.0.0.1:{PORT}\"\n"),
    )?;
    let mut console = Command::new(bin)
        .args(["console", "--dev-insecure-local", "--config"])
        .arg(&config)
        .args(source)
        .env("TOLLGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("tollgate console")?;
    let Some(out) = console.stdout.take() else {
        let _ = console.kill();
        bail!("the console's stdout");
    };
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line)?;
    if !line.starts_with("console listening") {
        let _ = console.kill();
        bail!("the console did not start: {line:?}");
    }
    if source.first() == Some(&"--store") {
        // The text index is made (the first time: every statement) before anything is
        // timed.
        let started = Instant::now();
        line.clear();
        out.read_line(&mut line)?;
        if !line.starts_with("console text index ready") {
            let _ = console.kill();
            bail!("the console's text index: {line:?}");
        }
        let index = text_index_of(Path::new(source[1]));
        eprintln!(
            "xtask: bench: console: text index ready in {:.0} s, {:.2} GB",
            started.elapsed().as_secs_f64(),
            fs::metadata(&index).map_or(0, |m| m.len()) as f64 / 1e9
        );
    }
    let result = measure();
    let _ = console.kill();
    let _ = console.wait();
    result
}

fn measure() -> anyhow::Result<Vec<Timing>> {
    let now = now_ms();
    let day = format!("from={}&to={}", now - 2 * DAY_MS, now - DAY_MS);
    let filters: Vec<(&'static str, String)> = vec![
        ("no filter", String::new()),
        ("repository", "repository=acme-3/service-23".to_owned()),
        (
            "repository + run",
            "repository=acme-3/service-23&run=100023".to_owned(),
        ),
        ("actor", "actor=user42".to_owned()),
        (
            "environment + decision",
            "environment=prod&decision=deny".to_owned(),
        ),
        ("one day", day),
        (
            "target + protocol",
            "target=pg-3&protocol=postgres".to_owned(),
        ),
        ("statement kind ddl", "kind=ddl".to_owned()),
        ("text, common", "q=payments".to_owned()),
        ("text, rare", "q=note_123".to_owned()),
        (
            "repository + text",
            "repository=acme-3/service-23&q=refunds".to_owned(),
        ),
    ];
    let mut timings = Vec::new();
    for (name, query) in filters {
        let (_, warm) = sessions(&query)?;
        let rows = warm["sessions"].as_array().map_or(0, Vec::len);
        let mut ms = Vec::with_capacity(ASKS);
        for _ in 0..ASKS {
            ms.push(sessions(&query)?.0.as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let timing = Timing {
            name,
            query,
            median_ms: percentile(&ms, 0.5),
            p90_ms: percentile(&ms, 0.9),
            rows,
        };
        eprintln!(
            "xtask: bench: console {:<24} {:>8.1} ms median {:>8.1} ms p90 ({} rows)",
            timing.name, timing.median_ms, timing.p90_ms, timing.rows
        );
        timings.push(timing);
    }
    // The 20th page of the unfiltered list, by its cursor.
    let mut cursor = String::new();
    for _ in 0..19 {
        let (_, page) = sessions(&cursor)?;
        let next = page["next_cursor"].as_str().context("a next page")?;
        cursor = format!("cursor={next}");
    }
    let mut ms = Vec::with_capacity(ASKS);
    let mut rows = 0;
    for _ in 0..ASKS {
        let (took, page) = sessions(&cursor)?;
        rows = page["sessions"].as_array().map_or(0, Vec::len);
        ms.push(took.as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    timings.push(Timing {
        name: "page 20 (cursor)",
        query: "cursor=…".to_owned(),
        median_ms: percentile(&ms, 0.5),
        p90_ms: percentile(&ms, 0.9),
        rows,
    });
    Ok(timings)
}

pub fn report(runs: &[Run]) {
    for run in runs {
        report_one(run);
    }
}

fn report_one(run: &Run) {
    let timings = &run.timings;
    if timings.is_empty() {
        return;
    }
    println!();
    println!(
        "## The console's sessions page on {} (1,000,000 connections, 10,000,000 statements)",
        run.source
    );
    println!();
    println!("| filter | query | median ms | p90 ms | rows |");
    println!("|---|---|---|---|---|");
    for t in timings {
        println!(
            "| {} | `{}` | {:.1} | {:.1} | {} |",
            t.name, t.query, t.median_ms, t.p90_ms, t.rows
        );
    }
    let mut medians: Vec<f64> = timings.iter().map(|t| t.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    println!();
    println!(
        "Median over the filters: {:.1} ms (the goal: at most 200 ms); slowest: {:.1} ms.",
        percentile(&medians, 0.5),
        medians.last().copied().unwrap_or(0.0)
    );
}
