// The frames that wait for their task are bounded: a socket that can pause reading
// (Node's ws) is paused until they drain; one that cannot (browsers) ends the connection
// with inbox_full. A scripted socket stands in for the WebSocket, to hand the client
// thousands of frames in one task as no real gateway can be made to on demand.
import assert from "node:assert/strict";
import { test } from "node:test";
import { INBOX_MAX_FRAMES, INBOX_PAUSE_FRAMES } from "../dist/connection.js";
import { connect } from "../dist/index.js";

/** A WebSocket class whose sockets the test drives; `canPause` adds pause() and resume(). */
function scriptedSockets({ canPause }) {
  const sockets = [];
  class ScriptedSocket {
    readyState = 0;
    sent = [];
    closed = undefined;
    log = [];
    onopen = null;
    onmessage = null;
    onclose = null;
    onerror = null;
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      sockets.push(this);
      queueMicrotask(() => {
        this.readyState = 1;
        this.onopen?.({});
        this.receive({
          type: "welcome", session: "s1", protocol: "mcpmux.v1", resumed: false, resume_window_ms: 60000,
          heartbeat_ms: 60000, received: 0, servers: [{ name: "a", state: "ready" }],
        });
      });
    }
    send(data) {
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closed = { code, reason };
      this.readyState = 3;
    }
    receive(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
  }
  if (canPause) {
    ScriptedSocket.prototype.pause = function () {
      this.log.push("pause");
    };
    ScriptedSocket.prototype.resume = function () {
      this.log.push("resume");
    };
  }
  return { WebSocket: ScriptedSocket, sockets };
}

test("a socket that can pause is paused while too many frames wait, and resumed", async () => {
  const { WebSocket, sockets } = scriptedSockets({ canPause: true });
  const mux = await connect("ws://gateway/ws", { WebSocket });
  const [socket] = sockets;
  const total = 3 * INBOX_PAUSE_FRAMES;
  let delivered = 0;
  const all = new Promise((resolve) =>
    mux.on("status", () => {
      if (++delivered === total) resolve();
    }),
  );
  for (let seq = 1; seq <= total; seq++) socket.receive({ type: "status", server: "a", seq, state: `s${seq}` });
  assert.deepEqual(socket.log, ["pause"], "paused once, while they wait");
  await all;
  assert.deepEqual(socket.log, ["pause", "resume"]);
  await mux.close();
});

test("a socket that cannot pause ends the connection with inbox_full", async () => {
  const { WebSocket, sockets } = scriptedSockets({ canPause: false });
  const mux = await connect("ws://gateway/ws", { WebSocket });
  const [socket] = sockets;
  const pending = mux.server("a").request("tools/list");
  const ended = new Promise((resolve) => mux.on("connection", (e) => e.state === "closed" && resolve(e)));
  for (let seq = 1; seq <= INBOX_MAX_FRAMES + 10; seq++) socket.receive({ type: "status", server: "a", seq, state: "x" });
  assert.deepEqual(socket.closed, { code: 1000, reason: "the client does not keep up" });
  await assert.rejects(pending, (error) => error.code === "inbox_full" && /more than 10000/.test(error.message));
  assert.equal((await ended).code, 1000);
});
