// Node's own cluster module serving the same hello response, for the benchmark.
// NODE_CLUSTER_SCHED_POLICY=rr|none picks Node's scheduling, PORT and WORKERS the rest.
const cluster = require("cluster");
const http = require("http");

const workers = Number(process.env.WORKERS || 2);
const port = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on("SIGTERM", () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http
    .createServer((req, res) => {
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("Hello, world!\n");
    })
    .listen(port, "127.0.0.1");
}
