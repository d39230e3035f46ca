// The handshake and the connection rules, against a scripted stand-in for the gateway
// (the real one cannot be made to close with a chosen code or to go silent on demand):
// where the key goes, resume after 4000-4499, no retry after 4500-4999, acks, and a
// silent gateway given up.
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, test } from "node:test";
import { WebSocketServer } from "ws";
import { MAX_QUEUED_BYTES, MAX_UNCONFIRMED_FRAMES } from "../dist/connection.js";
import { MuxError } from "../dist/index.js";
import { connectTo, nextEvent } from "./harness.mjs";

const servers = [];
const muxes = [];
after(async () => {
  await Promise.all(muxes.map((mux) => mux.close()));
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
});

/** Connects like the tests of the real gateway do; closed after the tests, whatever happens. */
async function open(url, options) {
  const mux = await connectTo(url, options);
  muxes.push(mux);
  return mux;
}

/**
 * A WebSocket server that records each connection (`url`, `protocols`, frames received)
 * and hands it to `script(connection, index)` once its first frame (hello) arrived.
 */
async function fakeGateway(script, { verifyClient } = {}) {
  const wss = new WebSocketServer({
    host: "127.0.0.1",
    port: 0,
    handleProtocols: (offered) => (offered.has("mcpmux.v1") ? "mcpmux.v1" : false),
    verifyClient,
  });
  servers.push(wss);
  await once(wss, "listening");
  const connections = [];
  const waiting = new Map(); // connection index -> resolvers
  wss.on("connection", (ws, req) => {
    const connection = {
      ws,
      url: req.url,
      protocols: req.headers["sec-websocket-protocol"],
      frames: [],
      send: (frame) => ws.send(JSON.stringify(frame)),
      welcome: (fields = {}) =>
        connection.send({
          type: "welcome", session: "s1", protocol: "mcpmux.v1", resumed: false,
          resume_window_ms: 60000, heartbeat_ms: 15000, servers: [{ name: "a", state: "ready" }],
          ...fields,
        }),
      /** Resolves with the first frame not yet taken by `next` for which `test` holds. */
      next: (test = () => true) =>
        new Promise((resolve) => {
          const look = () => {
            for (let i = connection.taken; i < connection.frames.length; i++) {
              if (test(connection.frames[i])) {
                connection.taken = i + 1;
                connection.lookers.delete(look);
                resolve(connection.frames[i]);
                return;
              }
            }
          };
          connection.lookers.add(look);
          look();
        }),
      taken: 0,
      lookers: new Set(),
    };
    ws.on("message", (data) => {
      connection.frames.push(JSON.parse(data.toString()));
      for (const look of [...connection.lookers]) look();
    });
    const index = connections.push(connection) - 1;
    ws.once("message", () => {
      script(connection, index);
      for (const resolve of waiting.get(index) ?? []) resolve(connection);
    });
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/ws`,
    connections,
    /** Resolves with connection number `n` (0-based) once its hello arrived. */
    connection: (n) =>
      connections[n]?.frames.length
        ? Promise.resolve(connections[n])
        : new Promise((resolve) => waiting.set(n, [...(waiting.get(n) ?? []), resolve])),
  };
}

const fast = { reconnect: { minDelayMs: 10, maxDelayMs: 50 } };

test("the key goes in hello by default, never in the URL", async () => {
  const fake = await fakeGateway((c) => c.welcome());
  const mux = await open(fake.url, { token: "s3cret/key+=" });
  const [c] = fake.connections;
  assert.equal(c.url, "/ws");
  assert.equal(c.protocols, "mcpmux.v1");
  assert.equal(c.frames[0].type, "hello");
  assert.equal(c.frames[0].token, "s3cret/key+=");
  assert.deepEqual(c.frames[0].client, { name: "mcpmux-ts-tests", version: "1" });
});

test("with keyIn subprotocol the key is a base64url subprotocol and not in hello", async () => {
  const fake = await fakeGateway((c) => c.welcome());
  const key = "s3cret/key+=ü";
  const mux = await open(fake.url, { token: key, keyIn: "subprotocol" });
  const [c] = fake.connections;
  const encoded = Buffer.from(key, "utf8").toString("base64url");
  assert.doesNotMatch(encoded, /=/);
  assert.deepEqual(c.protocols.split(/,\s*/), ["mcpmux.v1", `mcpmux.bearer.${encoded}`]);
  assert.equal(c.url, "/ws");
  assert.equal("token" in c.frames[0], false);
});

test("close code 4001: reconnects, resumes after the last seq, drops repeated frames", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index === 0) {
      c.welcome();
      for (let seq = 1; seq <= 3; seq++) c.send({ type: "status", server: "a", seq, state: `s${seq}` });
      await c.next((f) => f.type === "rpc"); // the client saw them all and wrote this
      c.ws.close(4001, "silent");
    } else {
      c.welcome({ resumed: true, servers: [{ name: "a", state: "s3" }] });
      c.send({ type: "status", server: "a", seq: 3, state: "s3" });
      c.send({ type: "status", server: "a", seq: 4, state: "s4" });
    }
  });
  const mux = await open(fake.url, { token: "k", ...fast });
  const states = [];
  const events = [];
  const hellos = [];
  mux.on("status", (e) => states.push(e.state));
  mux.on("connection", (e) => events.push(e));
  mux.on("frame", ({ direction, frame }) => direction === "out" && frame.type === "hello" && hellos.push(frame));
  await new Promise((resolve) => mux.on("status", (e) => e.state === "s3" && resolve()));
  await mux.server("a").notify("notifications/initialized");
  await new Promise((resolve) => mux.on("status", (e) => e.state === "s4" && resolve()));

  const second = fake.connections[1];
  assert.equal(second.url, "/ws?session=s1");
  assert.deepEqual(second.frames[0].resume, { session: "s1", last_seq: 3 });
  assert.equal(second.frames[0].token, "k");
  assert.equal(hellos[0].token, "(hidden)", "the frame event never shows the key");
  assert.deepEqual(states, ["s1", "s2", "s3", "s4"], "each frame once");
  assert.deepEqual(events, [
    { state: "reconnecting", code: 4001, reason: "silent", attempt: 1 },
    { state: "open", resumed: true },
  ]);
  assert.equal(mux.session, "s1");
});

test("close code 4501: never retried; pending calls reject with closed", async () => {
  const fake = await fakeGateway(async (c) => {
    c.welcome();
    await c.next((f) => f.type === "rpc");
    c.ws.close(4501, "unauthorized");
  });
  const mux = await open(fake.url, fast);
  const events = [];
  mux.on("connection", (e) => events.push(e));
  await assert.rejects(mux.server("a").request("tools/list"), (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "closed");
    assert.deepEqual(error.data, { code: 4501, reason: "unauthorized" });
    return true;
  });
  assert.deepEqual(events, [{ state: "closed", code: 4501, reason: "unauthorized" }]);
  assert.equal(fake.connections.length, 1);
  await assert.rejects(mux.server("a").notify("x"), (error) => error.code === "closed");
});

test("a first socket that fails rejects connect with connect_failed", async () => {
  const fake = await fakeGateway((c) => c.ws.close(4501, "unauthorized"));
  await assert.rejects(connectTo(fake.url, fast), (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "connect_failed");
    assert.deepEqual(error.data, { code: 4501, reason: "unauthorized" });
    return true;
  });
});

test("acks every ackEvery frames", async () => {
  const fake = await fakeGateway((c) => {
    c.welcome();
    for (let seq = 1; seq <= 25; seq++) c.send({ type: "status", server: "a", seq, state: "ready" });
  });
  const acks = [];
  const mux = await open(fake.url, { ackEvery: 10 });
  const c = fake.connections[0];
  acks.push(await c.next((f) => f.type === "ack"));
  acks.push(await c.next((f) => f.type === "ack"));
  assert.deepEqual(acks, [{ type: "ack", seq: 10 }, { type: "ack", seq: 20 }]);
});

test("a gateway silent for two heartbeat intervals is dropped and the session resumed", async () => {
  const fake = await fakeGateway((c, index) => {
    // The first never answers anything, not even ping.
    if (index === 0) c.welcome({ heartbeat_ms: 100 });
    else c.welcome({ resumed: true });
  });
  const mux = await open(fake.url, fast);
  const second = await fake.connection(1);
  assert.ok(fake.connections[0].frames.some((f) => f.type === "ping"), "it pinged first");
  assert.deepEqual(second.frames[0].resume, { session: "s1", last_seq: 0 });
});

test("after a resumed welcome the frames after `received` are written again, in order, first", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index === 0) {
      c.welcome();
      await c.next((f) => f.message?.method === "n3");
      c.ws.close(4000, "slow");
    } else {
      c.welcome({ resumed: true, received: 1 });
    }
  });
  const mux = await open(fake.url, fast);
  const a = mux.server("a");
  for (const method of ["n1", "n2", "n3"]) await a.notify(method);
  await nextEvent(mux, "connection", (e) => e.state === "open");
  await a.notify("n4");
  const second = fake.connections[1];
  const methods = [];
  for (let i = 0; i < 3; i++) methods.push((await second.next((f) => f.type === "rpc")).message.method);
  assert.deepEqual(methods, ["n2", "n3", "n4"]);
});

test("a pong confirms the frames before its ping: they are not written again", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index === 0) {
      c.welcome({ heartbeat_ms: 60_000 });
      await c.next((f) => f.type === "ping"); // asked after 32 unconfirmed frames
      await c.next((f) => f.message?.method === "n40");
      c.send({ type: "pong" });
      c.send({ type: "status", server: "a", seq: 1, state: "confirmed" });
    } else {
      // Claims nothing was read: only frames after the confirmed ones come again.
      c.welcome({ resumed: true, received: 0 });
    }
  });
  const mux = await open(fake.url, fast);
  const a = mux.server("a");
  const confirmed = nextEvent(mux, "status", (e) => e.state === "confirmed");
  for (let i = 1; i <= 40; i++) await a.notify(`n${i}`);
  await confirmed;
  fake.connections[0].ws.close(4000, "slow");
  await nextEvent(mux, "connection", (e) => e.state === "open");
  await a.notify("last");
  const second = fake.connections[1];
  const first = await second.next((f) => f.type === "rpc");
  const ping = fake.connections[0].frames.findIndex((f) => f.type === "ping");
  // The hello is frame 0 on the wire; the ping is frame `ping` of the session.
  assert.equal(first.message.method, `n${ping}`, "the first frame after the confirmed ping");
});

test("frames the gateway never confirms are bounded: the oldest request fails with resend_overflow", async () => {
  // Reads everything and confirms nothing (no pong), as a path that swallows bytes.
  const fake = await fakeGateway((c) => c.welcome({ heartbeat_ms: 60_000 }));
  const mux = await open(fake.url, fast);
  const a = mux.server("a");
  const first = a.request("tools/list");
  const outcome = first.then(
    () => "resolved",
    (error) => error,
  );
  for (let i = 0; i < MAX_UNCONFIRMED_FRAMES; i++) await a.notify("notifications/message");
  const error = await outcome;
  assert.ok(error instanceof MuxError, String(error));
  assert.equal(error.code, "resend_overflow");
  const cancel = await fake.connections[0].next((f) => f.message?.method === "notifications/cancelled");
  assert.equal(cancel.message.params.requestId, "mcpmux-1");
});

test("close code 4002: the session moved to another socket; nothing reconnects", async () => {
  const fake = await fakeGateway(async (c) => {
    c.welcome();
    await c.next((f) => f.type === "rpc");
    c.ws.close(4002, "the session moved to another connection");
  });
  const mux = await open(fake.url, fast);
  const events = [];
  mux.on("connection", (e) => events.push(e));
  await assert.rejects(mux.server("a").request("tools/list"), (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "session_moved");
    assert.equal(error.data.code, 4002);
    return true;
  });
  // Told in the same task as the rejection, before it.
  assert.deepEqual(events, [{ state: "closed", code: 4002, reason: "the session moved to another connection" }]);
  assert.equal(fake.connections.length, 1);
});

test("a welcome alone does not start the attempt count again: maxAttempts ends a flapping gateway", async () => {
  const fake = await fakeGateway((c, index) => {
    c.welcome({ resumed: index > 0 });
    c.ws.close(4000, "slow");
  });
  const mux = await open(fake.url, { reconnect: { minDelayMs: 1, maxDelayMs: 5, maxAttempts: 3 } });
  const closed = await nextEvent(mux, "connection", (e) => e.state === "closed");
  assert.equal(closed.code, 4000);
  assert.equal(fake.connections.length, 4, "the first socket and three attempts");
});

test("an upgrade refused with HTTP 401 on a reconnect ends the connection at once", async () => {
  let upgrades = 0;
  const fake = await fakeGateway(
    async (c) => {
      c.welcome();
      await c.next((f) => f.type === "rpc");
      c.ws.close(1001, "going away");
    },
    { verifyClient: (_info, done) => (++upgrades === 1 ? done(true) : done(false, 401)) },
  );
  const mux = await open(fake.url, fast);
  const call = mux.server("a").request("tools/list");
  await assert.rejects(call, (error) => {
    assert.equal(error.code, "refused");
    assert.equal(error.data.status, 401);
    assert.match(error.message, /HTTP 401/);
    return true;
  });
  assert.equal(upgrades, 2);
});

test("attempts that end before a welcome stop after maxFailures, with reconnect_failed", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index > 0) return c.ws.terminate(); // as a browser sees a refused upgrade: 1006
    c.welcome();
    await c.next((f) => f.type === "rpc");
    c.ws.close(1001, "going away");
  });
  const mux = await open(fake.url, { reconnect: { minDelayMs: 1, maxDelayMs: 5, maxFailures: 3 } });
  await assert.rejects(mux.server("a").request("tools/list"), (error) => {
    assert.equal(error.code, "reconnect_failed");
    assert.match(error.message, /3 attempts in a row/);
    return true;
  });
  assert.equal(fake.connections.length, 4);
});

test("closing a server's session settles while reconnecting, and when its socket drops", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index > 0) return; // never welcomes: the client stays reconnecting
    c.welcome();
    await c.next((f) => f.type === "close"); // read, never answered
    c.ws.close(4000, "slow");
  });
  const mux = await open(fake.url, fast);
  const reconnecting = nextEvent(mux, "connection", (e) => e.state === "reconnecting");
  const transport = mux.transport("a");
  await transport.start();
  const closed = new Promise((resolve) => (transport.onclose = resolve));
  await transport.close(); // its socket drops before the gateway answers
  await closed;
  await reconnecting;
  await mux.server("b").close(); // no socket with a welcome: settles at once
  await mux.close();
  assert.equal(fake.connections[0].frames.filter((f) => f.type === "close").length, 1);
});

test("frames written while reconnecting are bounded in bytes too: queue_full", async () => {
  const fake = await fakeGateway(async (c, index) => {
    if (index > 0) return; // never welcomes: the client stays reconnecting
    c.welcome();
    await c.next((f) => f.type === "rpc");
    c.ws.close(4000, "slow");
  });
  const mux = await open(fake.url, fast);
  const reconnecting = nextEvent(mux, "connection", (e) => e.state === "reconnecting");
  await mux.server("a").notify("first");
  await reconnecting;
  const small = mux.server("a").notify("small"); // waits for the resume
  const large = { data: "x".repeat(MAX_QUEUED_BYTES) };
  await assert.rejects(mux.server("a").notify("large", large), (error) => error.code === "queue_full");
  await mux.close();
  await assert.rejects(small, (error) => error.code === "closed");
});
