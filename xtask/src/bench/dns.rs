//! The DNS workload: one client sending queries back to back for `seconds`, directly to
//! the upstream (dnsmasq) and from inside a Tollgate job (to port 53, so through the
//! resolver), for one name over and over (the resolver answers from its cache) and for a
//! new name every time (each one forwarded). Reports queries/s and the median and p99
//! latency, and what the resolver adds at the median.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::median;

const CLIENT: &str = "\
import random, socket, struct, sys, time
host, port, mode, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
def query(qid, name):
    q = struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0)
    for part in name.split('.'):
        q += bytes([len(part)]) + part.encode()
    return q + b'\\x00' + struct.pack('>HH', 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((host, port))
salt = random.getrandbits(32)
lat = []
i = 0
start = time.monotonic()
end = start + secs
while time.monotonic() < end:
    i += 1
    name = 'www.bench.example' if mode == 'cached' else f'q{i}-{salt}.bench.example'
    t = time.perf_counter()
    s.send(query(i & 0xffff, name))
    s.recv(512)
    lat.append(time.perf_counter() - t)
lat.sort()
n = len(lat)
print(n / (time.monotonic() - start), lat[n // 2] * 1e6, lat[int(n * 0.99)] * 1e6)
";

pub const MODES: [&str; 2] = ["cached", "uncached"];
pub const PATHS: [&str; 2] = ["direct", "tollgate"];

pub struct Sample {
    pub path: usize,
    pub mode: usize,
    pub qps: f64,
    pub median_us: f64,
    pub p99_us: f64,
}

/// One run of the client. `job` is (agent binary, control socket) to run it in a job.
pub fn run(
    upstream_port: u16,
    job: Option<(&Path, &Path)>,
    mode: usize,
    seconds: u64,
) -> anyhow::Result<Sample> {
    let secs = seconds.to_string();
    let (path, mut cmd) = match job {
        None => {
            let mut cmd = Command::new("python3");
            cmd.args(["-c", CLIENT, "127.0.0.1", &upstream_port.to_string()]);
            (0, cmd)
        }
        Some((bin, socket)) => {
            let mut cmd = Command::new(bin);
            cmd.env("TOLLGATE_CONTROL_SOCKET", socket)
                .args(["run", "--label", "bench=dns", "--", "python3", "-c", CLIENT])
                .args(["127.0.0.1", "53"]);
            (1, cmd)
        }
    };
    let out = cmd
        .args([MODES[mode], &secs])
        .output()
        .context("running the DNS client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "DNS client ({}) failed: {text}{}",
            PATHS[path],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fields: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [qps, median_us, p99_us] = fields[..] else {
        bail!("DNS client output: {text}");
    };
    Ok(Sample {
        path,
        mode,
        qps,
        median_us,
        p99_us,
    })
}

pub fn report(samples: &[Sample], rounds: usize, seconds: u64) {
    println!();
    println!(
        "DNS, {rounds} rounds x {seconds} s per run, one client, queries back to back; \
         added = median latency minus direct's"
    );
    println!(
        "{:<10} {:<9} {:>10} {:>12} {:>10} {:>12}",
        "mode", "path", "qps", "median-us", "p99-us", "added-us"
    );
    for (mode, mode_name) in MODES.iter().enumerate() {
        let of = |path: usize, f: fn(&Sample) -> f64| {
            median(
                samples
                    .iter()
                    .filter(|s| s.mode == mode && s.path == path)
                    .map(f)
                    .collect(),
            )
        };
        let direct = of(0, |s| s.median_us);
        for (path, path_name) in PATHS.iter().enumerate() {
            let med = of(path, |s| s.median_us);
            println!(
                "{:<10} {:<9} {:>10.0} {:>12.1} {:>10.1} {:>12.1}",
                mode_name,
                path_name,
                of(path, |s| s.qps),
                med,
                of(path, |s| s.p99_us),
                med - direct
            );
        }
    }
}
