// The HTTP servers of the end-to-end tests: HTTP/1.1 (keep-alive) and HTTP/2 over
// cleartext (prior knowledge), on loopback ports of the system's choosing. Prints
// "HTTP1_PORT HTTP2_PORT" once both listen.
//
// Every answer is JSON about the request as it arrived: method, path, query, the body's
// length, the HTTP version, the peer's port (one per connection: a reused connection
// keeps it) and the x-ci-run header. GET /big?n=N answers N bytes of text; a path under
// /slow/ waits 100 ms first.
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

const h1 = http.createServer(answer);
const h2 = http2.createServer(answer);
let listening = 0;
const ready = () => {
  listening += 1;
  if (listening === 2) console.log(`${h1.address().port} ${h2.address().port}`);
};
h1.listen(0, "127.0.0.1", ready);
h2.listen(0, "127.0.0.1", ready);
