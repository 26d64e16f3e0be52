//! The CLI's side of the control socket (blocking; the CLI has no runtime).
use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Tollgate agent at {path}: {source}\n\
         hint: is the agent running? Start it with `tollgate agent` (or `cargo xtask run`), \
         or pass --control-socket"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the Tollgate agent at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent closed the control connection without a reply")]
    NoReply,
    #[error("malformed reply from the agent: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    Agent(String),
}

pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends a request and returns the reply; an error reply becomes `ClientError::Agent`.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let io_err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(io_err)?;
        let mut reply = String::new();
        let n = self
            .reader
            .read_line(&mut reply)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::NoReply);
        }
        match serde_json::from_str(&reply)? {
            Response::Error { message } => Err(ClientError::Agent(message)),
            response => Ok(response),
        }
    }
}
