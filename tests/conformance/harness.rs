//! The differential conformance harness: the same workload, with the same client, run
//! direct and inside a Tollgate job, must give the same output byte for byte.
//!
//! A workload is a directory of `*.sql` scripts (UTF-8). A script may start with
//! header comments:
//! - `-- encoding: LATIN9`: the session's client encoding; the script is sent in it.
//! - `-- clients: psql, psycopg-text`: the clients that run it (default: psql,
//!   psycopg-text, psycopg-binary, and tokio-postgres for UTF8 scripts).
//!
//! A `-- setup` line starts statements run once, directly, into a template database;
//! a `-- run` line starts the workload. Every run gets a fresh copy of the template, so
//! direct and job runs see the same data and the same type OIDs. psql runs the whole
//! workload as a script (meta-commands and COPY FROM STDIN included); the other
//! clients run each statement that ends with `;` at the end of a line, skipping psql's
//! backslash lines.
use std::{
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use tollgate_e2e::{Agent, output_with_stdin, postgres::Postgres};

pub const DATABASE: &str = "tollgate_conformance";
const TEMPLATE: &str = "tollgate_conformance_template";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Psql,
    PsycopgText,
    PsycopgBinary,
    TokioPostgres,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Client::Psql => "psql",
            Client::PsycopgText => "psycopg-text",
            Client::PsycopgBinary => "psycopg-binary",
            Client::TokioPostgres => "tokio-postgres",
        })
    }
}

impl Client {
    fn parse(name: &str) -> Option<Self> {
        [
            Client::Psql,
            Client::PsycopgText,
            Client::PsycopgBinary,
            Client::TokioPostgres,
        ]
        .into_iter()
        .find(|c| c.to_string() == name)
    }
}

pub struct Script {
    pub name: String,
    /// PostgreSQL's name of the client encoding.
    pub encoding: String,
    pub clients: Vec<Client>,
    pub setup: String,
    pub body: String,
}

impl Script {
    pub fn load(path: &Path) -> Self {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut encoding = "UTF8".to_owned();
        let mut clients = None;
        let (mut setup, mut body) = (String::new(), String::new());
        let mut in_setup = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(value) = trimmed.strip_prefix("-- encoding:") {
                encoding = value.trim().to_owned();
            } else if let Some(value) = trimmed.strip_prefix("-- clients:") {
                clients = Some(
                    value
                        .split(',')
                        .map(|c| {
                            Client::parse(c.trim()).unwrap_or_else(|| {
                                panic!("{}: unknown client {c:?}", path.display())
                            })
                        })
                        .collect(),
                );
            } else if trimmed == "-- setup" {
                in_setup = true;
            } else if trimmed == "-- run" {
                in_setup = false;
            } else {
                let section = if in_setup { &mut setup } else { &mut body };
                section.push_str(line);
                section.push('\n');
            }
        }
        let clients = clients.unwrap_or_else(|| {
            let mut all = vec![Client::Psql, Client::PsycopgText, Client::PsycopgBinary];
            // tokio-postgres speaks UTF8 only.
            if encoding == "UTF8" {
                all.push(Client::TokioPostgres);
            }
            all
        });
        Self {
            name: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            encoding,
            clients,
            setup,
            body,
        }
    }

    /// The body's statements, one by one (for the clients other than psql).
    pub fn statements(&self) -> Vec<String> {
        split_statements(&self.body)
    }
}

/// The scripts of a workload directory, by name.
pub fn workload(dir: &Path) -> Vec<Script> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("workload {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no *.sql scripts in {}", dir.display());
    paths.iter().map(|p| Script::load(p)).collect()
}

/// Statements that end with `;` at the end of a line (outside `$$` bodies).
pub fn split_statements(body: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut dollar = false;
    let mut in_copy_data = false;
    for line in body.lines() {
        if in_copy_data {
            in_copy_data = line != "\\.";
            continue;
        }
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with("--")) {
            continue;
        }
        if current.is_empty() && trimmed.starts_with('\\') {
            continue;
        }
        if line.matches("$$").count() % 2 == 1 {
            dollar = !dollar;
        }
        current.push_str(line);
        current.push('\n');
        if !dollar && trimmed.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').to_owned();
            if statement.to_ascii_uppercase().contains("FROM STDIN") {
                in_copy_data = true;
            }
            statements.push(statement);
            current.clear();
        }
    }
    statements
}

/// `text` in the PostgreSQL client encoding `name`.
pub fn encode(name: &str, text: &str) -> Vec<u8> {
    let encoding = match name {
        "UTF8" => return text.as_bytes().to_vec(),
        // Every character the workloads use is the same in LATIN1 and windows-1252.
        "LATIN1" | "WIN1252" => encoding_rs::WINDOWS_1252,
        "LATIN9" => encoding_rs::ISO_8859_15,
        "SJIS" => encoding_rs::SHIFT_JIS,
        "EUC_JP" => encoding_rs::EUC_JP,
        other => panic!("the harness cannot write scripts in {other}"),
    };
    let (bytes, _, unmappable) = encoding.encode(text);
    assert!(!unmappable, "the script has characters {name} cannot hold");
    bytes.into_owned()
}

fn python() -> PathBuf {
    std::env::var_os("TOLLGATE_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"),
        PathBuf::from,
    )
}

fn psql(pg: &Postgres, database: &str) -> Vec<String> {
    [
        "psql",
        "-X",
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
        "-d",
        database,
        "-v",
        "VERBOSITY=verbose",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn direct_psql(pg: &Postgres, database: &str, script: &[u8]) {
    let out = output_with_stdin(
        Command::new("psql")
            .args(&psql(pg, database)[1..])
            .args(["-v", "ON_ERROR_STOP=1"]),
        script,
    );
    assert!(
        out.status.success(),
        "setup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the template database of `script`: a fresh database with its setup done.
pub fn prepare(pg: &Postgres, script: &Script) {
    direct_psql(
        pg,
        "postgres",
        format!(
            "DROP DATABASE IF EXISTS {DATABASE};\nDROP DATABASE IF EXISTS {TEMPLATE};\n\
             CREATE DATABASE {TEMPLATE} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C';\n"
        )
        .as_bytes(),
    );
    if !script.setup.trim().is_empty() {
        direct_psql(pg, TEMPLATE, script.setup.as_bytes());
    }
}

/// What one run of `client` printed: stdout, stderr and how it exited.
pub fn run(pg: &Postgres, agent: Option<&Agent>, script: &Script, client: Client) -> Vec<u8> {
    direct_psql(
        pg,
        "postgres",
        format!(
            "DROP DATABASE IF EXISTS {DATABASE};\nCREATE DATABASE {DATABASE} TEMPLATE {TEMPLATE};\n"
        )
        .as_bytes(),
    );
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname={DATABASE}",
        pg.port
    );
    let (args, input): (Vec<String>, Vec<u8>) = match client {
        Client::Psql => (psql(pg, DATABASE), encode(&script.encoding, &script.body)),
        Client::PsycopgText | Client::PsycopgBinary => {
            let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/conformance.py");
            let job = serde_json::json!({
                "dsn": dsn,
                "encoding": script.encoding,
                "binary": client == Client::PsycopgBinary,
                "statements": script.statements(),
            });
            (
                vec![
                    python().display().to_string(),
                    program.display().to_string(),
                ],
                job.to_string().into_bytes(),
            )
        }
        Client::TokioPostgres => {
            let job = serde_json::json!({ "dsn": dsn, "statements": script.statements() });
            (
                vec![tollgate_e2e::helper(env!(
                    "CARGO_BIN_EXE_conformance_client"
                ))],
                job.to_string().into_bytes(),
            )
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = Agent::direct_or_in_job(agent, &[("repository", "acme/conformance")], &args);
    cmd.env("PGCLIENTENCODING", &script.encoding);
    let out = output_with_stdin(&mut cmd, &input);
    let mut seen = out.stdout;
    seen.extend_from_slice(b"\n---- stderr ----\n");
    seen.extend_from_slice(&out.stderr);
    seen.extend_from_slice(format!("\n---- {} ----\n", out.status).as_bytes());
    seen
}

/// The first line where `direct` and `job` differ, for the report.
pub fn first_difference(direct: &[u8], job: &[u8]) -> String {
    let direct: Vec<&[u8]> = direct.split(|&b| b == b'\n').collect();
    let job: Vec<&[u8]> = job.split(|&b| b == b'\n').collect();
    for (i, (d, j)) in direct.iter().zip(&job).enumerate() {
        if d != j {
            return format!(
                "line {}:\n  direct: {}\n  job:    {}",
                i + 1,
                String::from_utf8_lossy(d),
                String::from_utf8_lossy(j)
            );
        }
    }
    format!("{} lines direct, {} in the job", direct.len(), job.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn statements_split_at_line_ends() {
        let body = "SELECT 1;\n\\pset x\nDO $$ BEGIN\n  PERFORM 1;\nEND $$;\nCOPY t FROM STDIN;\na\n\\.\nSELECT\n  2;\n";
        assert_eq!(
            super::split_statements(body),
            [
                "SELECT 1",
                "DO $$ BEGIN\n  PERFORM 1;\nEND $$",
                "COPY t FROM STDIN",
                "SELECT\n  2"
            ]
        );
    }
}
