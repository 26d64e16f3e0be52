//! Relays bytes both ways in one task, propagating half-closes, and counts them even
//! when the relay ends with an error.
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::handler::{Progress, RelayError, Side, reset};

/// Relays until both sides have closed; on an error, resets both.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    buffer_size: usize,
    progress: &Progress,
) -> Option<RelayError> {
    let error = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let to_upstream = pump(&mut client_read, &mut upstream_write, buffer_size, |n| {
            progress.up(n)
        });
        let to_client = pump(&mut upstream_read, &mut client_write, buffer_size, |n| {
            progress.down(n)
        });
        tokio::pin!(to_upstream, to_client);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                result = &mut to_upstream, if !up_done => match result {
                    Ok(()) => up_done = true,
                    Err(source) => break Some(RelayError::Io { from: Side::Client, source }),
                },
                result = &mut to_client, if !down_done => match result {
                    Ok(()) => down_done = true,
                    Err(source) => break Some(RelayError::Io { from: Side::Server, source }),
                },
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    if error.is_some() {
        // One side reset or failed: reset both, so neither peer waits for more.
        reset(&client);
        reset(&upstream);
    }
    error
}

/// Copies until EOF, then half-closes the writer.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    buffer_size: usize,
    count: impl Fn(u64),
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
        count(n as u64);
    }
}
