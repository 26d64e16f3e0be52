//! Relays bytes both ways in one task, propagating half-closes, and counts them even
//! when the relay ends with an error.
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};
use tollgate_policy::Decision;

pub struct Outcome {
    /// Set when a policy reload revoked the connection mid-relay.
    pub revoked: Option<Decision>,
    /// Client to server.
    pub up: u64,
    /// Server to client.
    pub down: u64,
    pub error: Option<String>,
}

pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    buffer_size: usize,
    revoke: Option<oneshot::Receiver<Decision>>,
) -> Outcome {
    let mut revoked = None;
    let revoke = async move {
        match revoke {
            Some(receiver) => receiver.await.ok(),
            None => None,
        }
    };
    tokio::pin!(revoke);
    let mut revoke_done = false;
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let error = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let to_upstream = pump(&mut client_read, &mut upstream_write, &up, buffer_size);
        let to_client = pump(&mut upstream_read, &mut client_write, &down, buffer_size);
        tokio::pin!(to_upstream, to_client);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut to_upstream, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(e) => break Some(format!("client to server: {e}")),
                },
                result = &mut to_client, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(e) => break Some(format!("server to client: {e}")),
                },
                decision = &mut revoke, if !revoke_done => match decision {
                    Some(decision) => {
                        revoked = Some(decision);
                        break Some("closed: revoked by a policy reload".to_owned());
                    }
                    // No revocation can come any more (the registry let go).
                    None => revoke_done = true,
                },
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    if error.is_some() {
        // One side reset or failed: reset both, so neither peer waits for more.
        for stream in [&client, &upstream] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
        }
    }
    Outcome {
        revoked,
        up: up.into_inner(),
        down: down.into_inner(),
        error,
    }
}

/// Copies until EOF, then half-closes the writer.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    count: &AtomicU64,
    buffer_size: usize,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; buffer_size];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buffer[..n]).await?;
        // Only this task touches the counter; the atomic just makes the future Send.
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
