//! A session's stream on either side: plain TCP, or TLS over it.
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

pub enum Io {
    Plain(TcpStream),
    /// Tollgate terminating the client's TLS.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Tollgate's TLS to the server.
    Connected(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP connection underneath (for socket options such as SO_LINGER).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(tcp) => tcp,
            Io::Accepted(tls) => tls.get_ref().0,
            Io::Connected(tls) => tls.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Io::Plain(_))
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Connected(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
