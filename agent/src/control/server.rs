//! The control socket's server side.
use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{MAX_LINE, Request, Response};
use crate::{jobs::Caller, metrics::ControlMetrics};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control socket {0} is in use: is another agent running?")]
    InUse(PathBuf),
}

/// Handles one authorized request. Runs on the control runtime; blocking work belongs in
/// `spawn_blocking`.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        caller: Caller,
        request: Request,
    ) -> impl Future<Output = Response> + Send;

    /// A caller was refused at the socket; puts it on the audit trail.
    fn refused(&self, caller: Caller, op: &'static str, message: &str);
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    allowed_uids: Vec<u32>,
    allowed_gids: Vec<u32>,
    metrics: Arc<ControlMetrics>,
}

impl ControlServer {
    /// Binds the socket: mode 0666, or 0660 owned by `group`; access is then decided per
    /// caller and request by SO_PEERCRED.
    pub async fn bind(
        path: &Path,
        group: Option<u32>,
        allowed_uids: Vec<u32>,
        allowed_gids: Vec<u32>,
        metrics: Arc<ControlMetrics>,
    ) -> Result<Self, ControlError> {
        let io_err = |source| ControlError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        if path.exists() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ControlError::InUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        let mode = match group {
            Some(gid) => {
                std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err)?;
                0o660
            }
            None => 0o666,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            allowed_uids,
            allowed_gids,
            metrics,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn authorized(&self, caller: &Caller) -> bool {
        caller.uid == 0
            || self.allowed_uids.contains(&caller.uid)
            || self.allowed_gids.contains(&caller.gid)
    }

    /// Serves until the task is dropped.
    pub async fn serve<H: Handler>(self, handler: Arc<H>) {
        let server = Arc::new(self);
        loop {
            let stream = match server.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "control accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = server.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(error) = server.connection(stream, handler).await {
                    tracing::debug!(%error, "control connection ended");
                }
            });
        }
    }

    async fn connection<H: Handler>(&self, stream: UnixStream, handler: Arc<H>) -> io::Result<()> {
        let cred = stream.peer_cred()?;
        let caller = Caller {
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await?;
            if n == 0 {
                return Ok(());
            }
            let response = if line.len() > MAX_LINE {
                self.metrics.request("invalid", "error");
                let response = Response::Error {
                    message: format!("request longer than {MAX_LINE} bytes"),
                };
                write_line(&mut write, &response).await?;
                return Ok(());
            } else {
                let parsed = serde_json::from_slice::<Request>(&line);
                let open = matches!(&parsed, Ok(request) if !request.operator_only());
                if !open && !self.authorized(&caller) {
                    let op = parsed.as_ref().map_or("invalid", Request::op);
                    self.metrics.request(op, "denied");
                    let message = format!(
                        "permission denied: uid {} may not use the Tollgate control socket \
                         (see control.allowed_uids)",
                        caller.uid
                    );
                    handler.refused(caller, op, &message);
                    Response::Error { message }
                } else {
                    match parsed {
                        Ok(request) => {
                            let op = request.op();
                            let response = handler.clone().handle(caller, request).await;
                            let result = if matches!(response, Response::Error { .. }) {
                                "error"
                            } else {
                                "ok"
                            };
                            self.metrics.request(op, result);
                            response
                        }
                        Err(error) => {
                            self.metrics.request("invalid", "error");
                            Response::Error {
                                message: format!("malformed request: {error}"),
                            }
                        }
                    }
                }
            };
            write_line(&mut write, &response).await?;
        }
    }
}

async fn write_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> io::Result<()> {
    let mut text = serde_json::to_vec(response).map_err(io::Error::other)?;
    text.push(b'\n');
    write.write_all(&text).await
}
