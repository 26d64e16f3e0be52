//! Command-line interface. `anyhow` lives here, at the edge.
mod approvals;
mod central;
mod console;
mod hook;
mod install;
mod output;
mod policy;
mod run;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    config::{Config, DEFAULT_CONTROL_SOCKET, LogFormat},
    control::{Client, Request, Response},
};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Intercept, attribute, decide and record CI jobs' connections"
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "TOLLGATE_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (as root), or remove everything it installed.
    Agent {
        /// Config file [default: /etc/tollgate/agent.toml if it exists, else built-in].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Kill and remove job cgroups, detach and unpin the eBPF programs, then exit.
        #[arg(long)]
        cleanup: bool,
        /// Validate the config, print the effective config and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run a command as a new Tollgate job.
    Run {
        /// A label for the job (repeatable), e.g. --label repo=acme/api.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::jobs::parse_label)]
        labels: Vec<(String, String)>,
        /// A human-readable name for the job.
        #[arg(long)]
        name: Option<String>,
        /// A TOML file of pipeline identity fields (provider, repository, job, ...), for
        /// cron jobs, legacy scripts and systemd units. Recorded as host-asserted.
        #[arg(long, value_name = "FILE")]
        identity_file: Option<PathBuf>,
        /// Run the command as this user (name or uid), with its groups, once it is in
        /// the job (the caller must be root). A non-root job cannot leave its job.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// CI runner hooks: enroll the runner's job in Tollgate.
    Hook {
        #[command(subcommand)]
        command: hook::HookCommand,
    },
    /// Prove this job's identity with the CI system's OIDC token (run in a job step).
    Attest(hook::AttestArgs),
    /// The audit trail: enrolments, hooks, attestations and refused control requests;
    /// `audit verify` checks the record chain against its signed checkpoints.
    #[command(args_conflicts_with_subcommands = true)]
    Audit {
        #[command(subcommand)]
        command: Option<central::AuditCommand>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: central::FleetArgs,
    },
    /// The review console: a web UI and JSON API where reviewers find, replay and
    /// approve what jobs did (docs/console.md).
    Console(console::ConsoleArgs),
    /// The fleet's central store: create its schema, enrol this host's key, prune.
    Central {
        #[command(subcommand)]
        command: central::CentralCommand,
    },
    /// What the kernel refused or saw in jobs (refused sockets), newest first.
    Events {
        /// Only this job's events.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Jobs' DNS queries (answered by Tollgate's resolver), newest first.
    Dns {
        /// Only this job's queries.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Jobs' UDP flows other than DNS (decided by `udp:send`), newest first.
    Udp {
        /// Only this job's flows.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Jobs' connects to unix sockets (decided by `unix:connect`), newest first.
    Unix {
        /// Only this job's.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Set this host up for a CI runner: hooks, systemd unit, directories, socket group.
    Install {
        #[command(subcommand)]
        target: InstallTarget,
    },
    /// Remove what `tollgate install` set up (the recordings stay unless --purge).
    Uninstall {
        /// Install into this tree instead of / (for packaging and tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Also remove the state directory with its recordings.
        #[arg(long)]
        purge: bool,
    },
    /// The local CA that issues the certificates Tollgate presents to PostgreSQL clients.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// List the active jobs.
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// Just-in-time approval requests: list, show, approve, deny; grants: revoke.
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Recorded sessions (connections).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Check, explain and test policies (offline, with the agent's engine).
    Policy {
        /// Config whose policy.dir, policy.mode and targets apply.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Show the agent's status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic recording store for the console's benchmark (cargo xtask bench
    /// --workloads console; docs/benchmarks.md).
    #[command(hide = true)]
    BenchStore {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        jobs: u64,
        #[arg(long, default_value_t = 1_000_000)]
        connections: u64,
        #[arg(long, default_value_t = 10_000_000)]
        statements: u64,
        #[arg(long, default_value_t = 30)]
        days: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead: write the store at --out (made before) to stdout as the central
        /// store's records of this host, for `COPY tollgate.records (host, seq, at, kind,
        /// record_id, body, prev, hash) FROM STDIN`.
        #[arg(long, value_name = "HOST")]
        copy_records: Option<String>,
    },
    /// Switch the eBPF programs' log of rare events (refusals and why, failed map
    /// inserts) while they run: off, warn or info. The lines appear in the agent's log
    /// under the target tollgate::kernel; `[bpf] log` sets the level at start.
    KernelLog {
        #[arg(value_name = "LEVEL")]
        level: crate::bpf::KernelLog,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM), for clients using sslmode=verify-full.
    Export {
        /// Config whose state.dir holds the CA [default: /etc/tollgate/agent.toml or
        /// built-in].
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum InstallTarget {
    /// A self-hosted GitHub Actions runner.
    GithubRunner {
        /// The runner's directory (where config.sh and .env are).
        #[arg(long)]
        runner_dir: PathBuf,
        /// The account the runner runs as [default: the runner directory's owner].
        #[arg(long)]
        runner_user: Option<String>,
        /// Install into this tree instead of / (for packaging and tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policies against the schema; errors name file:line:col.
    Check {
        /// A .cedar file or a directory [default: the config's policy.dir].
        path: Option<PathBuf>,
    },
    /// Print the decision and the determining policies for one connection.
    Explain(Box<policy::ExplainArgs>),
    /// Run a table of expected decisions (TOML); exits non-zero on a failure.
    Test { file: PathBuf },
    /// Print the Cedar schema policies are validated against.
    Schema,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List recorded sessions, newest first.
    List {
        /// Only the sessions of this job.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: central::FleetArgs,
    },
    /// Show one session.
    Show {
        /// Session id or a unique prefix of it.
        id: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: central::FleetArgs,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let socket = cli.control_socket;
    match cli.command {
        Command::Agent {
            config,
            cleanup,
            check_config,
        } => {
            let (config, source) = Config::load(config.as_deref())?;
            if check_config {
                println!("# effective config (from {source})");
                for note in config.notes() {
                    println!("# note: {note}");
                }
                print!("{}", toml::to_string(&config)?);
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(&config);
            if cleanup {
                let removed = crate::agent::cleanup(&config)?;
                if removed.is_empty() {
                    println!("nothing to remove");
                }
                for path in removed {
                    println!("removed {path}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            crate::agent::run(config, source)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            labels,
            name,
            identity_file,
            user,
            command,
        } => run::run(
            &socket,
            user.as_deref(),
            labels.into_iter().collect(),
            name,
            identity_file.as_deref(),
            &command,
        ),
        Command::Hook { command } => hook::hook(&socket, command),
        Command::Ca {
            command: CaCommand::Export { config },
        } => {
            let (config, _) = Config::load(config.as_deref())?;
            let pem = crate::postgres::tls::ca_pem(&config.state.dir).with_context(|| {
                format!(
                    "no local CA in {}/ca yet: the agent creates it when it starts",
                    config.state.dir.display()
                )
            })?;
            print!("{pem}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Install {
            target:
                InstallTarget::GithubRunner {
                    runner_dir,
                    runner_user,
                    root,
                },
        } => install::install_github_runner(&runner_dir, runner_user.as_deref(), &root),
        Command::Uninstall { root, purge } => install::uninstall(&root, purge),
        Command::Attest(args) => hook::attest(&socket, &args),
        Command::Audit {
            command: Some(command),
            ..
        } => central::audit(command),
        Command::Central { command } => central::central(command),
        Command::Console(args) => console::run(args, socket),
        Command::Audit {
            command: None,
            limit,
            json,
            fleet,
        } if fleet.is_central() => central::audit_list(&fleet, limit, json),
        Command::Audit {
            command: None,
            limit,
            json,
            ..
        } => {
            let Response::Audit { entries } = call(&socket, &Request::ListAudit { limit })? else {
                anyhow::bail!("unexpected reply");
            };
            output::audit(&entries, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { job, limit, json } => {
            let request = Request::ListEvents { job_id: job, limit };
            let Response::Events { events } = call(&socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            output::events(&events, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dns { job, limit, json } => {
            let request = Request::ListDns { job_id: job, limit };
            let Response::Dns { queries } = call(&socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            output::dns(&queries, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Udp { job, limit, json } => {
            let request = Request::ListUdpFlows { job_id: job, limit };
            let Response::UdpFlows { flows } = call(&socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            output::udp_flows(&flows, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Unix { job, limit, json } => {
            let request = Request::ListUnix { job_id: job, limit };
            let Response::Unix { connects } = call(&socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            output::unix_connects(&connects, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let Response::Jobs { jobs } = call(&socket, &Request::ListJobs {})? else {
                anyhow::bail!("unexpected reply");
            };
            output::jobs(&jobs, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Approvals { command } => approvals::run(&socket, command),
        Command::Sessions { command } => match command {
            SessionsCommand::List {
                job,
                limit,
                json,
                fleet,
            } if fleet.is_central() => central::sessions(&fleet, job.as_deref(), limit, json),
            SessionsCommand::Show { id, json, fleet } if fleet.is_central() => {
                central::session(&fleet, &id, json)
            }
            SessionsCommand::List {
                job, limit, json, ..
            } => {
                let request = Request::ListSessions { job_id: job, limit };
                let Response::Sessions { sessions } = call(&socket, &request)? else {
                    anyhow::bail!("unexpected reply");
                };
                output::sessions(&sessions, json)?;
                Ok(ExitCode::SUCCESS)
            }
            SessionsCommand::Show { id, json, .. } => {
                let Response::Session(session) = call(&socket, &Request::ShowSession { id })?
                else {
                    anyhow::bail!("unexpected reply");
                };
                output::session(&session, json)?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Policy { config, command } => match command {
            PolicyCommand::Check { path } => policy::check(path, config.as_deref()),
            PolicyCommand::Explain(args) => policy::explain(*args, config.as_deref()),
            PolicyCommand::Test { file } => policy::test(&file, config.as_deref()),
            PolicyCommand::Schema => {
                print!("{}", tollgate_policy::schema::SCHEMA);
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Status { json } => {
            let Response::Status(status) = call(&socket, &Request::Status {})? else {
                anyhow::bail!("unexpected reply");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                println!("{}", toml::to_string(&status)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchStore {
            out,
            jobs,
            connections,
            statements,
            days,
            seed,
            copy_records,
        } => {
            if let Some(host) = copy_records {
                let stdout = std::io::stdout().lock();
                let mut stdout = std::io::BufWriter::with_capacity(1 << 20, stdout);
                let records = crate::record::synth::copy_records(&out, &host, &mut stdout)?;
                std::io::Write::flush(&mut stdout)?;
                eprintln!("{records} records");
                return Ok(ExitCode::SUCCESS);
            }
            if out.exists() {
                anyhow::bail!("{} exists", out.display());
            }
            let shape = crate::record::synth::Shape {
                jobs,
                connections,
                statements,
                days,
                seed,
            };
            let started = std::time::Instant::now();
            let written = crate::record::synth::generate(&out, &shape, |n| {
                eprint!("\r{n} connections");
            })?;
            eprintln!();
            println!(
                "{} jobs, {} connections, {} statements in {:.1} s",
                written.jobs,
                written.connections,
                written.statements,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::KernelLog { level } => {
            let request = Request::SetKernelLog { level };
            let Response::KernelLog { previous, level } = call(&socket, &request)? else {
                anyhow::bail!("unexpected reply");
            };
            println!("kernel log: {level} (was {previous})");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn call(socket: &std::path::Path, request: &Request) -> anyhow::Result<Response> {
    let mut client = Client::connect(socket)?;
    client.call(request).context("request failed")
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
