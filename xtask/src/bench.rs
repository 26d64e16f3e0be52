//! `cargo xtask bench`: pgbench against PostgreSQL through every path in one run — a
//! direct connection, the same client inside a Tollgate job on the kernel path (a kernel
//! verdict: straight to the server, recorded from kernel events), with the agent
//! relaying at L4 (`postgres.enabled = false`, `proxy.kernel_verdicts = false`) and
//! following PostgreSQL at L7 (every statement classified, decided and recorded), and
//! pgbouncer in session mode — interleaved over several rounds, reporting median TPS and
//! the ratio to direct from the same round, what each path costs the host in CPU time
//! per transaction, the latency each adds at `-c1`, and (bulk) 1 GiB over HTTP by curl.
use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::build;

mod bulk;
mod central;
mod console;
mod dns;
mod env;
mod fleet_store;
mod http;

use env::Environment;

pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub scale: u32,
    /// The agents' `proxy.workers`; 0 leaves the agent's default.
    pub workers: usize,
    /// Indexes into [`PATHS`]; always starts with direct, the reference.
    paths: Vec<usize>,
    /// Indexes into [`WORKLOADS`].
    workloads: Vec<usize>,
    /// `--baseline BIN`: another build of the agent, measured as the `baseline-*` paths
    /// next to this one's in the same run (a change's before and after).
    pub baseline: Option<PathBuf>,
}

impl Options {
    /// Checks `--paths` and `--workloads` by name; empty means all.
    pub fn new(
        rounds: usize,
        seconds: u64,
        scale: u32,
        workers: usize,
        paths: &[String],
        workloads: &[String],
        baseline: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        if baseline.is_none()
            && let Some(named) = paths.iter().find(|p| is_baseline(p))
        {
            bail!("path {named:?} needs --baseline BIN");
        }
        let mut paths = select(&PATHS, paths, "path", Some(0))?;
        if baseline.is_none() {
            paths.retain(|&p| !is_baseline(PATHS[p]));
        }
        Ok(Self {
            rounds,
            seconds,
            scale,
            workers,
            paths,
            workloads: select(&WORKLOAD_KEYS, workloads, "workload", None)?,
            baseline,
        })
    }
}

/// Indexes of `chosen` in `known` (all of them when nothing is chosen), starting with
/// `always` when given.
fn select(
    known: &[&str],
    chosen: &[String],
    what: &str,
    always: Option<usize>,
) -> anyhow::Result<Vec<usize>> {
    if chosen.is_empty() {
        return Ok((0..known.len()).collect());
    }
    let mut indexes: Vec<usize> = always.into_iter().collect();
    for name in chosen {
        let Some(index) = known.iter().position(|k| k == name) else {
            bail!("unknown {what} {name:?}; known: {}", known.join(", "));
        };
        if !indexes.contains(&index) {
            indexes.push(index);
        }
    }
    Ok(indexes)
}

/// The names `--workloads` takes, in the order of [`WORKLOADS`].
const WORKLOAD_KEYS: [&str; 8] = [
    "select", "connect", "latency", "dns", "bulk", "central", "console", "http",
];
/// The `-c1` workload, whose report adds each path's latency over direct.
const LATENCY_WORKLOAD: usize = 2;
/// The DNS workload (bench/dns.rs), which is not a pgbench run.
const DNS_WORKLOAD: usize = 3;
/// The bulk workload (bench/bulk.rs): curl, not pgbench.
const BULK_WORKLOAD: usize = 4;
/// The recording workload (bench/central.rs): shipping to a central store.
const CENTRAL_WORKLOAD: usize = 5;
/// The review console's sessions page on a big store (bench/console.rs): no agent, run
/// before the others.
const CONSOLE_WORKLOAD: usize = 6;
/// wrk against a local HTTP origin, direct, through Tollgate at L7 and through nginx
/// (bench/http.rs): an environment of its own.
const HTTP_WORKLOAD: usize = 7;

/// A workload: name and pgbench arguments (besides host/port/duration).
const WORKLOADS: [(&str, &[&str]); 3] = [
    (
        "-S -c8 (simple)",
        &["-S", "-M", "simple", "-c", "8", "-j", "2"],
    ),
    (
        "-C -S -c4",
        &["-C", "-S", "-M", "simple", "-c", "4", "-j", "2"],
    ),
    (
        "-S -c1 (latency)",
        &["-S", "-M", "simple", "-c", "1", "-j", "1"],
    ),
];
const PATHS: [&str; 8] = [
    "direct",
    "tollgate-kernel",
    "tollgate-l4",
    "tollgate-l7",
    "tollgate-l7-durable",
    "pgbouncer",
    "baseline-l4",
    "baseline-l7",
];

/// A path whose agent is the `--baseline` build.
fn is_baseline(path: &str) -> bool {
    path.starts_with("baseline-")
}
/// The paths of the bulk workload (L4 only: no L7 handler for HTTP yet).
const BULK_PATHS: [&str; 3] = ["direct", "tollgate-kernel", "tollgate-l4"];

/// One agent under test: its path name, proxy port, whether it follows PostgreSQL (the
/// server is then a declared `protocol = "postgres"` target), whether each statement
/// waits for its record (`recording.durable`), and `proxy.kernel_verdicts`.
/// The `baseline-*` agents run the `--baseline` build, and only with it.
const AGENTS: [(&str, u16, bool, bool, bool); 6] = [
    ("tollgate-kernel", 975, false, false, true),
    ("tollgate-l4", 979, false, false, false),
    ("tollgate-l7", 978, true, false, false),
    ("tollgate-l7-durable", 976, true, true, false),
    ("baseline-l4", 973, false, false, false),
    ("baseline-l7", 974, true, false, false),
];

pub fn bench(root: &Path, options: &Options) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the benchmark needs root (it runs the agent)");
    }
    let bin = build(root, true)?;
    let console = if options.workloads.contains(&CONSOLE_WORKLOAD) {
        console::run(root, &bin)?
    } else {
        Vec::new()
    };
    let http = if options.workloads.contains(&HTTP_WORKLOAD) {
        http::run(&bin, options.rounds, options.seconds, options.workers)?
    } else {
        Vec::new()
    };
    if options
        .workloads
        .iter()
        .all(|w| [CONSOLE_WORKLOAD, HTTP_WORKLOAD].contains(w))
    {
        console::report(&console);
        http::report(&http, options.rounds);
        return Ok(());
    }
    let scratch = PathBuf::from(format!("/tmp/tollgate-bench-{}", std::process::id()));
    let mut env = Environment::start(&scratch, &bin, options)?;
    let result = measure(&mut env, options);
    env.stop();
    let (results, dns, bulk, central) = result?;
    report(&results, options);
    latency(&results, options);
    if !dns.is_empty() {
        dns::report(&dns, options.rounds, options.seconds);
    }
    bulk::report(&bulk, &BULK_PATHS, options.rounds);
    central::report(&central, options.seconds);
    console::report(&console);
    http::report(&http, options.rounds);
    Ok(())
}

struct Sample {
    round: usize,
    workload: usize,
    path: usize,
    tps: f64,
    /// Host CPU time (every process and the kernel, steal excluded) per transaction, in
    /// microseconds: the cost of a path, much less sensitive than TPS to the neighbours
    /// of a shared host.
    cpu_us: f64,
    /// CPU time of the path's own process (the agent, its record writer included, or
    /// pgbouncer) per transaction, in microseconds; 0 for direct.
    proxy_us: f64,
}

/// `run`'s result, with the host's busy time over it and that of process `proxy`, every
/// thread (zero without one).
fn cpu_over<T>(
    proxy: Option<u32>,
    run: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration, Duration)> {
    let proxy_before = proxy.map(process_cpu).transpose()?;
    let busy_before = host_busy()?;
    let out = run()?;
    let busy = host_busy()?.saturating_sub(busy_before);
    let proxy_busy = match (proxy, proxy_before) {
        (Some(pid), Some(before)) => process_cpu(pid)?.saturating_sub(before),
        _ => Duration::ZERO,
    };
    Ok((out, busy, proxy_busy))
}

/// CPU time (user and system, every thread) of process `pid` so far, from its
/// /proc/PID/stat.
fn process_cpu(pid: u32) -> anyhow::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    process_time(&stat, clock_ticks())
}

/// utime + stime of a /proc/PID/stat line (fields 14 and 15, counted after the
/// parenthesised comm, which may hold spaces).
fn process_time(stat: &str, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat has no comm")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("/proc/PID/stat: too few fields")?
            .parse()
            .context("/proc/PID/stat: a time field is not a number")
    };
    // After the comm, field 3 (state) is index 0: utime is field 14, stime 15.
    let ticks = field(11)? + field(12)?;
    Ok(Duration::from_micros(
        ticks * 1_000_000 / ticks_per_second.max(1),
    ))
}

/// Busy CPU time of the whole host so far, from the `cpu` line of /proc/stat.
fn host_busy() -> anyhow::Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    busy_time(&stat, clock_ticks())
}

/// user + nice + system + irq + softirq: idle, iowait and steal (time the hypervisor gave
/// to someone else) are not this host's work.
fn busy_time(stat: &str, ticks_per_second: u64) -> anyhow::Result<Duration> {
    let fields = stat
        .lines()
        .find_map(|line| line.strip_prefix("cpu "))
        .context("/proc/stat has no cpu line")?
        .split_whitespace()
        .map(|field| field.parse::<u64>())
        .collect::<Result<Vec<_>, _>>()
        .context("/proc/stat: a cpu field is not a number")?;
    let [user, nice, system, _idle, _iowait, irq, softirq, ..] = fields[..] else {
        bail!("/proc/stat: fewer than 7 cpu fields");
    };
    let ticks = user + nice + system + irq + softirq;
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second.max(1) as f64,
    ))
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

type Measured = (
    Vec<Sample>,
    Vec<dns::Sample>,
    Vec<bulk::Sample>,
    Vec<central::Sample>,
);

fn measure(env: &mut Environment, options: &Options) -> anyhow::Result<Measured> {
    let mut samples = Vec::new();
    let mut dns_samples = Vec::new();
    let mut bulk_samples = Vec::new();
    let mut central_samples = Vec::new();
    let bulk_port = if options.workloads.contains(&BULK_WORKLOAD) {
        bulk::serve()?
    } else {
        0
    };
    for round in 0..options.rounds {
        for &workload in &options.workloads {
            if workload == CONSOLE_WORKLOAD || workload == HTTP_WORKLOAD {
                continue;
            }
            if workload == BULK_WORKLOAD {
                for (index, name) in BULK_PATHS.iter().enumerate() {
                    if !options.paths.iter().any(|&p| PATHS[p] == *name) {
                        continue;
                    }
                    let socket = env
                        .agents
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, a)| a.socket.clone());
                    let job = socket.as_deref().map(|s| (env.bin.as_path(), s));
                    let busy_before = host_busy()?;
                    let bytes_per_s = bulk::fetch(bulk_port, job)?;
                    let busy = host_busy()?.saturating_sub(busy_before);
                    let mib = (bulk::BYTES >> 20) as f64;
                    let cpu_us_per_mib = busy.as_secs_f64() * 1e6 / mib;
                    eprintln!(
                        "xtask: bench: round {} bulk {name:<19} {:>10.0} MiB/s {cpu_us_per_mib:>7.1} cpu-us/MiB",
                        round + 1,
                        bytes_per_s / f64::from(1 << 20)
                    );
                    bulk_samples.push(bulk::Sample {
                        round,
                        path: index,
                        bytes_per_s,
                        cpu_us_per_mib,
                    });
                }
                continue;
            }
            if workload == CENTRAL_WORKLOAD {
                let scratch = env.scratch.clone();
                let sample = central::run(env, &scratch, round, options.seconds)?;
                eprintln!(
                    "xtask: bench: round {} central {:>10.1} tps {:>9.1} statements/s shipped, \
                     max lag {:.2} s, drained in {:.2} s, {} lost, {:.2} agent-us/record",
                    round + 1,
                    sample.tps,
                    sample.statements_per_s,
                    sample.max_lag_s,
                    sample.drain_s,
                    sample.lost,
                    sample.agent_us_per_record
                );
                central_samples.push(sample);
                continue;
            }
            if workload == DNS_WORKLOAD {
                let agent = env
                    .agents
                    .iter()
                    .find(|(name, _)| *name == "tollgate-l4")
                    .map(|(_, a)| a.socket.clone())
                    .context("no L4 agent")?;
                for mode in 0..dns::MODES.len() {
                    for job in [None, Some((env.bin.as_path(), agent.as_path()))] {
                        let sample = dns::run(env.dns_port, job, mode, options.seconds)?;
                        eprintln!(
                            "xtask: bench: round {} dns {:<8} {:<8} {:>8.0} qps {:>7.1} us median",
                            round + 1,
                            dns::MODES[mode],
                            dns::PATHS[sample.path],
                            sample.qps,
                            sample.median_us
                        );
                        dns_samples.push(sample);
                    }
                }
                continue;
            }
            let (name, args) = WORKLOADS[workload];
            for &path in &options.paths {
                let path_name = PATHS[path];
                let proxy = env.proxy_pid(path_name);
                let (tps, busy, proxy_busy) =
                    cpu_over(proxy, || env.pgbench(path_name, args, options.seconds))?;
                let transactions = (tps * options.seconds as f64).max(1.0);
                let cpu_us = busy.as_secs_f64() * 1e6 / transactions;
                let proxy_us = proxy_busy.as_secs_f64() * 1e6 / transactions;
                eprintln!(
                    "xtask: bench: round {} {name:<16} {path_name:<19} {tps:>10.1} tps \
                     {cpu_us:>7.1} cpu-us/txn {proxy_us:>6.1} proxy-us/txn",
                    round + 1
                );
                samples.push(Sample {
                    round,
                    workload,
                    path,
                    tps,
                    cpu_us,
                    proxy_us,
                });
            }
        }
    }
    Ok((samples, dns_samples, bulk_samples, central_samples))
}

/// What each path adds to a transaction's latency at `-c1`, from the same round's
/// direct run: 1/tps(path) - 1/tps(direct), in microseconds.
fn latency(samples: &[Sample], options: &Options) {
    if !options.workloads.contains(&LATENCY_WORKLOAD) {
        return;
    }
    println!();
    println!("-S -c1: latency added per transaction over direct, median over rounds");
    println!("{:<19} {:>12}", "path", "added us");
    for &path in options.paths.iter().skip(1) {
        let added: Vec<f64> = (0..options.rounds)
            .filter_map(|round| {
                let of = |p: usize| {
                    samples
                        .iter()
                        .find(|s| s.round == round && s.workload == LATENCY_WORKLOAD && s.path == p)
                        .map(|s| s.tps)
                };
                Some(1e6 / of(path)? - 1e6 / of(0)?)
            })
            .collect();
        println!("{:<19} {:>12.1}", PATHS[path], median(added));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn report(samples: &[Sample], options: &Options) {
    if samples.is_empty() {
        return;
    }
    println!();
    println!(
        "pgbench, {} rounds x {} s per run, interleaved; ratio = path TPS / direct TPS of the same round",
        options.rounds, options.seconds
    );
    println!("cpu-us/txn = host CPU time (steal excluded) per transaction, median over rounds");
    println!(
        "proxy-us/txn = CPU time of the path's own process (agent or pgbouncer) per transaction"
    );
    println!(
        "{:<18} {:<19} {:>11} {:>13} {:>36} {:>11} {:>13}",
        "workload",
        "path",
        "median tps",
        "median ratio",
        "per-round ratios",
        "cpu-us/txn",
        "proxy-us/txn"
    );
    for &workload in options
        .workloads
        .iter()
        .filter(|&&w| WORKLOADS.get(w).is_some())
    {
        let name = WORKLOADS[workload].0;
        for &path in &options.paths {
            let path_name = PATHS[path];
            let runs = || {
                samples
                    .iter()
                    .filter(move |s| s.workload == workload && s.path == path)
            };
            let tps: Vec<f64> = runs().map(|s| s.tps).collect();
            let cpu_us: Vec<f64> = runs().map(|s| s.cpu_us).collect();
            let proxy_us: Vec<f64> = runs().map(|s| s.proxy_us).collect();
            let ratios: Vec<f64> = (0..options.rounds)
                .filter_map(|round| {
                    let of = |p: usize| {
                        samples
                            .iter()
                            .find(|s| s.round == round && s.workload == workload && s.path == p)
                            .map(|s| s.tps)
                    };
                    Some(of(path)? / of(0)?)
                })
                .collect();
            let per_round = ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" ");
            println!(
                "{:<18} {:<19} {:>11.1} {:>13.3} {:>36} {:>11.1} {:>13.1}",
                name,
                path_name,
                median(tps),
                median(ratios.clone()),
                per_round,
                median(cpu_us),
                median(proxy_us)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn process_cpu_is_user_plus_system_after_the_comm() {
        let stat = "42 (tollgate (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 10";
        assert_eq!(process_time(stat, 100).unwrap(), Duration::from_secs(3));
        assert!(process_time("42 tollgate", 100).is_err());
    }

    #[test]
    fn host_cpu_counts_busy_time_only() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 20 30 5000 40 5 15 700 0 0\ncpu0 50 10 15 2500 20 2 7 350 0 0\n";
        assert_eq!(busy_time(stat, 100).unwrap(), Duration::from_millis(1700));
        assert!(busy_time("cpu0 1 2 3 4 5 6 7\n", 100).is_err());
        assert!(busy_time("cpu  1 2 3\n", 100).is_err());
        assert!(busy_time("cpu  1 2 x 4 5 6 7\n", 100).is_err());
    }

    #[test]
    fn path_and_workload_selection() {
        let all = Options::new(3, 20, 10, 0, &[], &[], None).unwrap();
        assert_eq!(all.paths, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(all.workloads, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        // With a baseline build, its paths are measured too, and only then.
        let with = Options::new(3, 20, 10, 0, &[], &[], Some("/old".into())).unwrap();
        assert_eq!(with.paths, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        let error = Options::new(3, 20, 10, 0, &names(&["baseline-l7"]), &[], None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("needs --baseline"), "{error}");

        // direct is always measured first, as the reference; duplicates collapse.
        let some = Options::new(
            3,
            20,
            10,
            0,
            &names(&["pgbouncer", "direct", "pgbouncer"]),
            &names(&["connect"]),
            None,
        )
        .unwrap();
        assert_eq!(some.paths, vec![0, 5]);
        assert_eq!(some.workloads, vec![1]);

        let error = Options::new(3, 20, 10, 0, &names(&["tollgate"]), &[], None)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("unknown path \"tollgate\""), "{error}");
        assert!(Options::new(3, 20, 10, 0, &[], &names(&["select-only"]), None).is_err());
    }
}
