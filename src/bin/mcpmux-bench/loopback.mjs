// Preloaded into supergateway by mcpmux-bench: its WebSocket mode listens on every
// interface at a fixed port; this makes it listen on 127.0.0.1 at a free port, and
// prints the port on standard output for the benchmark to read.
import http from "node:http";

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (_port, ...rest) {
  const callback = rest.find((arg) => typeof arg === "function");
  this.once("listening", () => {
    process.stdout.write(`bench-loopback-port ${this.address().port}\n`);
  });
  return listen.call(this, 0, "127.0.0.1", callback);
};
