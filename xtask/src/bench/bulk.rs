//! The bulk workload: 1 GiB over HTTP from a local server, fetched with curl directly
//! and inside a job of each L4 agent (kernel path and userspace relay), reported as
//! bytes per second and host CPU per MiB.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::Command,
};

use anyhow::{Context as _, bail};

/// Bytes in one fetch.
pub const BYTES: u64 = 1 << 30;

/// A server answering every GET with [`BYTES`] zero bytes; it runs until the process
/// ends. Returns its port.
pub fn serve() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the bulk server")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {BYTES}\r\nConnection: close\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let chunk = vec![0u8; 1 << 20];
                for _ in 0..BYTES / chunk.len() as u64 {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// One fetch, direct or through `tollgate run` of the agent at `socket`: bytes/s, as
/// curl measured the transfer (the job's own start is not in it).
pub fn fetch(port: u16, job: Option<(&Path, &Path)>) -> anyhow::Result<f64> {
    let url = format!("http://127.0.0.1:{port}/bulk");
    let curl = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download} %{speed_download}",
        &url,
    ];
    let mut cmd = match job {
        Some((bin, socket)) => {
            let mut cmd = Command::new(bin);
            cmd.env("TOLLGATE_CONTROL_SOCKET", socket)
                .args(["run", "--label", "bench=bulk", "--"])
                .args(curl);
            cmd
        }
        None => {
            let mut cmd = Command::new(curl[0]);
            cmd.args(&curl[1..]);
            cmd
        }
    };
    let out = cmd.output().context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let (size, speed) = (
        fields.next(),
        fields.next().and_then(|s| s.parse::<f64>().ok()),
    );
    match (size, speed) {
        (Some(size), Some(speed)) if out.status.success() && size == BYTES.to_string() => Ok(speed),
        _ => bail!(
            "curl fetched {text:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

pub struct Sample {
    pub round: usize,
    /// Index into the bulk paths.
    pub path: usize,
    pub bytes_per_s: f64,
    /// Host CPU time per MiB fetched, in microseconds.
    pub cpu_us_per_mib: f64,
}

pub fn report(samples: &[Sample], paths: &[&str], rounds: usize) {
    if samples.is_empty() {
        return;
    }
    println!();
    println!(
        "bulk: 1 GiB over HTTP by curl, {rounds} rounds; ratio = path bytes/s / direct bytes/s of the same round"
    );
    println!(
        "{:<19} {:>14} {:>13} {:>36} {:>13}",
        "path", "median MiB/s", "median ratio", "per-round ratios", "cpu-us/MiB"
    );
    for (index, name) in paths.iter().enumerate() {
        let of = |round: usize, path: usize| {
            samples
                .iter()
                .find(|s| s.round == round && s.path == path)
                .map(|s| s.bytes_per_s)
        };
        let ratios: Vec<f64> = (0..rounds)
            .filter_map(|round| Some(of(round, index)? / of(round, 0)?))
            .collect();
        let mine = || samples.iter().filter(|s| s.path == index);
        if mine().next().is_none() {
            continue;
        }
        println!(
            "{:<19} {:>14.0} {:>13.3} {:>36} {:>13.1}",
            name,
            super::median(mine().map(|s| s.bytes_per_s / f64::from(1 << 20)).collect()),
            super::median(ratios.clone()),
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            super::median(mine().map(|s| s.cpu_us_per_mib).collect()),
        );
    }
}
