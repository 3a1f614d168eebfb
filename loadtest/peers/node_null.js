// Node's cluster with workers that do nothing but take connections (read once, write a
// canned response, close), for `python -m loadtest front`: the primary's cost alone.
const cluster = require("cluster");
const net = require("net");

const workers = Number(process.env.WORKERS || 2);
const port = Number(process.env.PORT || 8000);
const RESPONSE = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on("SIGTERM", () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  net
    .createServer((sock) => {
      sock.once("data", () => sock.end(RESPONSE));
      sock.on("error", () => {});
    })
    .listen(port, "127.0.0.1");
}
