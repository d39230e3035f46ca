// A TCP relay between a client and the gateway that can cut every connection without a
// WebSocket close frame (both sockets destroyed) and refuse new ones for a while, or
// silence them (connections stay open but carry nothing more, as a path that lost its
// route does).
import { createServer, connect as tcpConnect } from "node:net";
import { once } from "node:events";

/** Starts a relay on 127.0.0.1:0 to `targetPort`; resolves with its controls. */
export async function startRelay(targetPort) {
  const pairs = new Set();
  const requestLines = [];
  const onConnection = (client) => {
    const upstream = tcpConnect(targetPort, "127.0.0.1");
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      client.destroy();
      upstream.destroy();
      pairs.delete(pair);
    };
    client.once("data", (chunk) => requestLines.push(chunk.toString("latin1").split("\r\n")[0]));
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const destroyAll = () => {
    for (const { client, upstream } of [...pairs]) {
      client.destroy();
      upstream.destroy();
    }
    pairs.clear();
  };
  let reopen;
  let server = createServer(onConnection);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = server.address().port;
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    /** The first line of every HTTP request that came through (the upgrade's). */
    requestLines,
    /** Stops carrying bytes both ways on every open connection, without closing any. */
    silence() {
      for (const { client, upstream } of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        // Read and drop, so that neither side sees its writes refused.
        client.on("data", () => {});
        upstream.on("data", () => {});
      }
    },
    /** Destroys every relayed connection (no close frame on either side); new ones are carried. */
    reset() {
      destroyAll();
    },
    /** Destroys every relayed connection and refuses new ones for `ms`. */
    async cutFor(ms) {
      const closed = new Promise((resolve) => server.close(() => resolve()));
      destroyAll();
      await closed;
      reopen = setTimeout(() => {
        reopen = undefined;
        server = createServer(onConnection);
        server.listen(port, "127.0.0.1");
      }, ms);
    },
    async stop() {
      clearTimeout(reopen);
      const closed = new Promise((resolve) => server.close(() => resolve()));
      destroyAll();
      await closed;
    },
  };
}
