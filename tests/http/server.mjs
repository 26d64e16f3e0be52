// The HTTP servers of the end-to-end tests: HTTP/1.1 (keep-alive) and HTTP/2 over
// cleartext (prior knowledge), and with a certificate and key HTTPS (h2 or http/1.1 by
// ALPN), on loopback ports of the system's choosing. Prints their ports once all
// listen.
//
// Every answer is JSON about the request as it arrived: method, path, query, the body's
// length, the HTTP version, the peer's port (one per connection: a reused connection
// keeps it) and the x-ci-run header. GET /big?n=N answers N bytes of text; a path under
// /slow/ waits 100 ms first.
import fs from "node:fs";
import http from "node:http";
import http2 from "node:http2";

function answer(req, res) {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const url = new URL(req.url, "http://x");
    const send = () => {
      if (url.pathname === "/big") {
        const n = Number(url.searchParams.get("n") || "0");
        res.writeHead(200, { "content-type": "text/plain" });
        res.end("x".repeat(n));
        return;
      }
      const body = JSON.stringify({
        method: req.method,
        path: url.pathname,
        query: url.search.replace(/^\?/, ""),
        bytes: Buffer.concat(chunks).length,
        version: req.httpVersion,
        peer: req.socket.remotePort,
        ci_run: req.headers["x-ci-run"] ?? null,
      });
      res.writeHead(200, { "content-type": "application/json", "x-served-by": "node" });
      res.end(body);
    };
    if (url.pathname.startsWith("/slow/")) setTimeout(send, 100);
    else send();
  });
}

// With `CERT KEY` arguments, a third server: HTTPS offering h2 and http/1.1 (ALPN).
const [cert, key] = process.argv.slice(2);
const servers = [http.createServer(answer), http2.createServer(answer)];
if (cert && key) {
  servers.push(
    http2.createSecureServer(
      { cert: fs.readFileSync(cert), key: fs.readFileSync(key), allowHTTP1: true },
      answer,
    ),
  );
}
// An `Upgrade: echo` request on HTTP/1.1 switches protocols: the server then echoes
// every byte it gets (a stand-in for WebSocket).
servers[0].on("upgrade", (req, socket, head) => {
  socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n");
  if (head.length) socket.write(head);
  socket.pipe(socket);
});
// A CONNECT tunnel: the server answers 200 and then echoes every byte it gets.
servers[0].on("connect", (req, socket, head) => {
  socket.write("HTTP/1.1 200 Connection Established\r\n\r\n");
  if (head.length) socket.write(head);
  socket.pipe(socket);
});
let listening = 0;
const ready = () => {
  listening += 1;
  if (listening === servers.length) {
    console.log(servers.map((s) => s.address().port).join(" "));
  }
};
for (const server of servers) server.listen(0, "127.0.0.1", ready);
