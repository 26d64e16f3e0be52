//! An HTTPS server on loopback for the TLS tests: Python's http.server behind its ssl
//! module, with a self-signed certificate (made by openssl) for the names it is given.
//! `GET` answers 200 with [`BODY`].
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

pub const BODY: &str = "hello over tls\n";

const SERVER: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello over tls\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

pub struct HttpsServer {
    pub port: u16,
    /// The CA that issued the server's certificate (PEM), for clients that verify it.
    pub cert: PathBuf,
    /// The server's own certificate and key (PEM), for another server to present.
    pub leaf: PathBuf,
    pub key: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl HttpsServer {
    /// Serves a certificate for `names` (its subject alternative names), issued by a CA
    /// of its own ([`HttpsServer::cert`]), as real servers' are.
    pub fn start(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let (ca, ca_key) = (path("ca.pem"), path("ca-key.pem"));
        let (leaf, key, csr, ext) = (
            path("leaf.pem"),
            path("key.pem"),
            path("leaf.csr"),
            path("leaf.ext"),
        );
        let openssl = |args: &[&std::ffi::OsStr]| {
            let made = Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl");
            assert!(made.success(), "openssl {args:?}: {made}");
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let os = |s: &str| std::ffi::OsString::from(s);
        let mut args: Vec<std::ffi::OsString> = vec![os("req"), os("-x509")];
        args.extend(new_key.iter().map(|a| os(a)));
        args.extend([
            os("-days"),
            os("1"),
            os("-subj"),
            os("/CN=Tollgate test CA"),
        ]);
        args.extend([
            os("-keyout"),
            ca_key.clone().into(),
            os("-out"),
            ca.clone().into(),
        ]);
        openssl(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        let mut args: Vec<std::ffi::OsString> = vec![os("req")];
        args.extend(new_key.iter().map(|a| os(a)));
        let subject = format!("/CN={}", names.first().copied().unwrap_or("localhost"));
        args.extend([os("-subj"), os(&subject)]);
        args.extend([
            os("-keyout"),
            key.clone().into(),
            os("-out"),
            csr.clone().into(),
        ]);
        openssl(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        let san = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .expect("extensions");
        let args: Vec<std::ffi::OsString> = vec![
            os("x509"),
            os("-req"),
            os("-days"),
            os("1"),
            os("-in"),
            csr.into(),
            os("-CA"),
            ca.clone().into(),
            os("-CAkey"),
            ca_key.into(),
            os("-CAcreateserial"),
            os("-extfile"),
            ext.into(),
            os("-out"),
            leaf.clone().into(),
        ];
        openssl(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        let cert = ca;
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(&leaf)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 https server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's port");
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the HTTPS server did not start: {line:?}")
        });
        Self {
            port,
            cert,
            leaf,
            key,
            child,
            _dir: dir,
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
