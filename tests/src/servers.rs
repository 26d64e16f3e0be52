//! Small servers on loopback for the tests to connect to.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

pub const HTTP_BODY: &str = "hello from the tollgate e2e http server\n";

#[derive(Clone, Copy)]
enum Mode {
    /// Answers one HTTP request with HTTP_BODY, then closes; `GET /slow` after 200 ms.
    Http,
    /// Reads until EOF, then closes.
    Sink,
    /// Keeps each HTTP request's body (and its Authorization header), answers 200.
    Collect,
}

/// What a [`Server::collector`] received: (authorization header, body) per request.
pub type Collected = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A threaded server; stops on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    /// The requests a collector received.
    pub collected: Collected,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn http(bind: &str) -> Self {
        Self::start(bind, Mode::Http)
    }

    pub fn sink(bind: &str) -> Self {
        Self::start(bind, Mode::Sink)
    }

    /// An HTTP server that keeps what was POSTed to it (a webhook receiver).
    pub fn collector(bind: &str) -> Self {
        Self::start(bind, Mode::Collect)
    }

    fn start(bind: &str, mode: Mode) -> Self {
        let listener = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let collected = Collected::default();
        let (stop2, accepted2, collected2) = (stop.clone(), accepted.clone(), collected.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                accepted2.fetch_add(1, Ordering::Relaxed);
                let collected = collected2.clone();
                std::thread::spawn(move || serve(stream, mode, &collected));
            }
        });
        Self {
            addr,
            stop,
            accepted,
            collected,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn serve(mut stream: TcpStream, mode: Mode, collected: &Collected) {
    let mut buf = [0u8; 4096];
    match mode {
        Mode::Collect => {
            let mut request = Vec::new();
            let head_end = loop {
                if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            };
            let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    key.eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_owned())
                })
            };
            let length: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while request.len() < head_end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = String::from_utf8_lossy(&request[head_end..head_end + length]).into_owned();
            if let Ok(mut all) = collected.lock() {
                all.push((header("authorization"), body));
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
        Mode::Http => {
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if request.starts_with(b"GET /slow ") {
                // A client that lives a while after its connect, as most do.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{HTTP_BODY}",
                HTTP_BODY.len()
            );
        }
        Mode::Sink => {
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
