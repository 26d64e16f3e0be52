//! A UDP client the UDP tests run directly and inside a job, so that both outputs can be
//! compared line by line; and the echo server they talk to.
//!
//! - `udp_probe echo BIND`: echoes every datagram back to its sender, forever.
//! - `udp_probe sendto DEST COUNT`: one unconnected socket, `sendto` then `recvfrom`.
//! - `udp_probe connect DEST COUNT`: one connected socket, `send` then `recv`, and its
//!   peer as `getpeername` shows it.
//! - `udp_probe alternate DEST1 DEST2 COUNT`: one unconnected socket sending to both in
//!   turn, each reply printed with its source.
//!
//! Each line says what happened: `sent N`, `reply N <payload> from <addr>`, `timeout N`
//! or `error <step> <errno name>`. A v6 DEST with a v4-mapped address uses a dual-stack
//! socket.
use std::{
    io,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    let addr = |i: usize| -> SocketAddr {
        arg(i)
            .parse()
            .unwrap_or_else(|e| panic!("address {:?}: {e}", arg(i)))
    };
    let count = |i: usize| arg(i).parse::<u32>().unwrap_or(1);
    match arg(0) {
        "echo" => echo(addr(1)),
        "sendto" => sendto(&[addr(1)], count(2)),
        "alternate" => sendto(&[addr(1), addr(2)], count(3)),
        "connect" => connect(addr(1), count(2)),
        other => panic!("unknown mode {other:?}"),
    }
}

fn echo(bind: SocketAddr) {
    let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    println!("listening {}", socket.local_addr().expect("local address"));
    let mut buf = [0u8; 65_536];
    loop {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    }
}

fn socket_for(dest: SocketAddr) -> UdpSocket {
    let bind: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0".parse().expect("v4")
    } else {
        "[::]:0".parse().expect("v6")
    };
    let socket = UdpSocket::bind(bind).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    socket
}

fn errno(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EPERM) => "EPERM".to_owned(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".to_owned(),
        Some(libc::EAGAIN) => "timeout".to_owned(),
        Some(code) => format!("errno {code}"),
        None => error.to_string(),
    }
}

fn sendto(dests: &[SocketAddr], count: u32) {
    let socket = socket_for(dests[0]);
    let mut buf = [0u8; 65_536];
    for i in 0..count {
        let dest = dests[i as usize % dests.len()];
        let payload = format!("probe-{i}-{}", "x".repeat(i as usize * 100));
        if let Err(error) = socket.send_to(payload.as_bytes(), dest) {
            println!("error sendto {i} {}", errno(&error));
            continue;
        }
        println!("sent {i}");
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => println!(
                "reply {i} {} from {from}",
                String::from_utf8_lossy(&buf[..n.min(12)])
            ),
            Err(error) => println!("error recvfrom {i} {}", errno(&error)),
        }
    }
}

fn connect(dest: SocketAddr, count: u32) {
    let socket = socket_for(dest);
    if let Err(error) = socket.connect(dest) {
        println!("error connect {}", errno(&error));
        return;
    }
    match socket.peer_addr() {
        Ok(peer) => println!("peer {peer}"),
        Err(error) => println!("error getpeername {}", errno(&error)),
    }
    let mut buf = [0u8; 65_536];
    for i in 0..count {
        let payload = format!("probe-{i}");
        if let Err(error) = socket.send(payload.as_bytes()) {
            println!("error send {i} {}", errno(&error));
            continue;
        }
        println!("sent {i}");
        match socket.recv(&mut buf) {
            Ok(n) => println!("reply {i} {}", String::from_utf8_lossy(&buf[..n])),
            Err(error) => println!("error recv {i} {}", errno(&error)),
        }
    }
}
