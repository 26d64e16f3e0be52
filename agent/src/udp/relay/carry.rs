//! What carries an allowed flow: a connected socket of the agent's to the destination,
//! and the task that sends what comes back to the job.
use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use tokio::{net::UdpSocket, task::AbortHandle};

use super::MAX_DATAGRAM;
use crate::{
    record::now_ms,
    udp::{Direction, Outcome, UdpMetrics},
};

pub(super) struct Carried {
    pub upstream: Arc<UdpSocket>,
    pub back: Arc<Back>,
    pub reader: AbortHandle,
}

/// What the reader of an upstream socket shares with its flow.
pub(super) struct Back {
    /// The relay socket the job's latest datagram arrived on: replies leave from it.
    pub via: Mutex<Arc<UdpSocket>>,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub last_ms: AtomicI64,
}

/// The upstream socket of an allowed flow, and the task that sends what comes back
/// to the job.
pub(super) fn carry(
    client: SocketAddr,
    dst: SocketAddr,
    arrived: &Arc<UdpSocket>,
    metrics: &Arc<UdpMetrics>,
) -> io::Result<Carried> {
    let bind: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.connect(dst)?;
    socket.set_nonblocking(true)?;
    let upstream = Arc::new(UdpSocket::from_std(socket)?);
    let back = Arc::new(Back {
        via: Mutex::new(arrived.clone()),
        packets: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        last_ms: AtomicI64::new(0),
    });
    let reader = tokio::spawn(replies(
        upstream.clone(),
        back.clone(),
        client,
        metrics.clone(),
    ))
    .abort_handle();
    Ok(Carried {
        upstream,
        back,
        reader,
    })
}

/// Sends without waiting, whatever tokio last saw of the socket's readiness (a socket
/// just made has none yet): a datagram either goes now or is dropped, as UDP may.
pub(super) fn send_now(
    socket: &UdpSocket,
    payload: &[u8],
    to: Option<SocketAddr>,
) -> io::Result<usize> {
    let socket = socket2::SockRef::from(socket);
    match to {
        Some(to) => socket.send_to(payload, &to.into()),
        None => socket.send(payload),
    }
}

/// What the destination sends back, to the job, from the relay socket the job's latest
/// datagram arrived on.
async fn replies(
    upstream: Arc<UdpSocket>,
    back: Arc<Back>,
    client: SocketAddr,
    metrics: Arc<UdpMetrics>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let n = match upstream.recv(&mut buf).await {
            Ok(n) => n,
            // An ICMP error for an earlier datagram (port unreachable): a job that
            // sends directly would see it on a connected socket; here it is only
            // counted, and the flow goes on.
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                metrics.datagram(Direction::In, Outcome::RefusedByPeer, 0);
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, %client, "UDP upstream receive");
                return;
            }
        };
        let via = back.via.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let outcome = match send_now(&via, &buf[..n], Some(client)) {
            Ok(_) => {
                back.packets.fetch_add(1, Ordering::Relaxed);
                back.bytes.fetch_add(n as u64, Ordering::Relaxed);
                back.last_ms.store(now_ms(), Ordering::Relaxed);
                Outcome::Relayed
            }
            Err(_) => Outcome::Dropped,
        };
        metrics.datagram(Direction::In, outcome, n);
    }
}
