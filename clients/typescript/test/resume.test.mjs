// Drops without a close frame, through a TCP relay: a resumed session loses nothing, and
// a refused resume rejects what was pending with session_lost.
import assert from "node:assert/strict";
import { once } from "node:events";
import { after, before, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import WebSocket from "ws";
import { MuxError } from "../dist/index.js";
import { connectTo, nextEvent, ready, startGateway, toolText } from "./harness.mjs";
import { startRelay } from "./relay.mjs";

let gateway;
let shortWindow;
/** Short delays, and no limit on failed attempts: a 3 s outage takes more than 10 of them. */
const OUTAGE = { minDelayMs: 100, maxDelayMs: 500, maxFailures: Infinity };

before(async () => {
  [gateway, shortWindow] = await Promise.all([
    startGateway(),
    startGateway({ gateway: { resumeWindowMs: 1000 } }),
  ]);
});

after(async () => {
  await Promise.all([gateway?.stop(), shortWindow?.stop()]);
});

/** Starts server-everything's long-running operation; resolves once `count` progress came. */
function longOperation(everything, { duration, steps, count }) {
  const progress = [];
  let reached;
  const enough = new Promise((resolve) => (reached = resolve));
  const result = everything.request(
    "tools/call",
    { name: "trigger-long-running-operation", arguments: { duration, steps } },
    {
      onprogress: (p) => {
        progress.push(p.progress);
        if (progress.length === count) reached();
      },
    },
  );
  return { progress, enough, result };
}

test("a call survives a 3 s cut with every progress notification once, in order", async () => {
  const relay = await startRelay(gateway.port);
  const mux = await connectTo(relay.url, { reconnect: OUTAGE });
  try {
    const session = mux.session;
    const events = [];
    mux.on("connection", (e) => events.push(e));
    await ready(mux, "everything");
    const everything = mux.server("everything");
    await everything.initialize();

    const steps = 30;
    const call = longOperation(everything, { duration: 6, steps, count: 5 });
    await call.enough;
    const reconnecting = nextEvent(mux, "connection", (e) => e.state === "reconnecting");
    const resumed = nextEvent(mux, "connection", (e) => e.state === "open");
    await relay.cutFor(3000);
    await reconnecting;
    // Written while no socket is open: queued, and sent once the session is resumed.
    const queued = everything.request("tools/call", { name: "echo", arguments: { message: "queued" } });
    assert.deepEqual(await resumed, { state: "open", resumed: true });
    assert.match(toolText(await call.result), /completed/);
    assert.equal(toolText(await queued), "Echo: queued");

    assert.equal(mux.session, session, "the same session went on");
    assert.ok(events.some((e) => e.state === "reconnecting"), JSON.stringify(events));
    assert.deepEqual(
      call.progress,
      call.progress.map((_, i) => i + 1),
      "every progress notification once, in order",
    );
    // mcp-proxy usually drops the last progress notification before a result.
    assert.ok(call.progress.length >= steps - 1, `received ${call.progress.length} of ${steps}`);
    // The resuming upgrade named the session, for load balancers, as it is: the id
    // names its gateway instance, and a balancer routes on the raw query.
    assert.match(session, /^[a-z0-9-]{1,32}\.[0-9a-f]{32}$/);
    assert.ok(
      relay.requestLines.slice(1).some((line) => line.startsWith(`GET /ws?session=${session} `)),
      relay.requestLines.join("\n"),
    );
    assert.ok(!relay.requestLines[0].includes("session="));

    const echo = await everything.request("tools/call", { name: "echo", arguments: { message: "after" } });
    assert.equal(toolText(echo), "Echo: after");
  } finally {
    await mux.close();
    await relay.stop();
  }
});

test("a request written into a path that already went silent is sent again after the resume", async () => {
  const relay = await startRelay(gateway.port);
  const mux = await connectTo(relay.url, { reconnect: { minDelayMs: 10, maxDelayMs: 100 } });
  try {
    await ready(mux, "everything");
    const everything = mux.server("everything");
    await everything.initialize();
    // Answered, so every frame before it was read: only what follows can be missing.
    await everything.request("tools/call", { name: "echo", arguments: { message: "before" } });
    const writes = [];
    mux.on("frame", ({ direction, frame }) => direction === "out" && writes.push(frame));
    const resumed = nextEvent(mux, "connection", (e) => e.state === "open");

    relay.silence(); // the path is dead, and nothing says so yet
    const call = everything.request("tools/call", { name: "echo", arguments: { message: "into the void" } });
    const isCall = (f) => f.type === "rpc" && f.message.params?.arguments?.message === "into the void";
    assert.equal(writes.filter(isCall).length, 1, "written on the dead socket");
    relay.reset();

    assert.deepEqual(await resumed, { state: "open", resumed: true });
    assert.equal(toolText(await call), "Echo: into the void");
    assert.equal(writes.filter(isCall).length, 2, "written once more after the resume, and only once");
    const hello = writes.findIndex((f) => f.type === "hello");
    assert.ok(isCall(writes[hello + 1]), `resent first, right after hello: ${JSON.stringify(writes)}`);
  } finally {
    await mux.close();
    await relay.stop();
  }
});

test("a refused resume rejects pending calls with session_lost and reports the lost session", async () => {
  const relay = await startRelay(shortWindow.port);
  const mux = await connectTo(relay.url, { reconnect: OUTAGE });
  try {
    const session = mux.session;
    await ready(mux, "everything");
    const everything = mux.server("everything");
    await everything.initialize();
    const sdk = new Client({ name: "sdk-memory", version: "1" });
    await sdk.connect(mux.transport("memory"));
    const sdkClosed = new Promise((resolve) => (sdk.onclose = resolve));
    await assert.rejects(mux.server("nowhere").request("tools/list"), (e) => e.code === "unknown_server");
    const call = longOperation(everything, { duration: 10, steps: 10, count: 1 });
    await call.enough;

    const lost = [];
    mux.on("session", (e) => e.state === "lost" && lost.push(e));
    const reopened = nextEvent(mux, "connection", (e) => e.state === "open");
    await relay.cutFor(3000); // longer than the gateway's 1 s resume window

    await assert.rejects(call.result, (error) => {
      assert.ok(error instanceof MuxError);
      assert.equal(error.code, "session_lost");
      return true;
    });
    assert.deepEqual(await reopened, { state: "open", resumed: false });
    // Reported for the servers that had an upstream session, before the connection opened.
    assert.deepEqual(lost.map((e) => e.server).sort(), ["everything", "memory"]);
    await sdkClosed; // the SDK client is told its transport closed
    assert.notEqual(mux.session, session, "a fresh session");

    // The fresh session works once initialized again.
    await everything.initialize();
    const echo = await everything.request("tools/call", { name: "echo", arguments: { message: "fresh" } });
    assert.equal(toolText(echo), "Echo: fresh");
  } finally {
    await mux.close();
    await relay.stop();
  }
});

test("a session another socket resumed has moved: pending calls reject with session_moved, no reconnect", async () => {
  const mux = await connectTo(gateway.url, { reconnect: { minDelayMs: 10, maxDelayMs: 100 } });
  const other = new WebSocket(gateway.url, ["mcpmux.v1"]);
  const otherOpen = once(other, "open");
  try {
    await ready(mux, "everything");
    const everything = mux.server("everything");
    await everything.initialize();
    const events = [];
    mux.on("connection", (e) => events.push(e));
    const call = longOperation(everything, { duration: 10, steps: 10, count: 1 });
    await call.enough;

    await otherOpen;
    other.send(JSON.stringify({ type: "hello", resume: { session: mux.session, last_seq: 0 } }));
    const [welcome] = await once(other, "message");
    assert.equal(JSON.parse(welcome.toString()).resumed, true, "the other socket has the session now");

    await assert.rejects(call.result, (error) => {
      assert.ok(error instanceof MuxError);
      assert.equal(error.code, "session_moved");
      return true;
    });
    assert.deepEqual(events.map((e) => [e.state, e.code]), [["closed", 4002]]);
    await assert.rejects(everything.request("tools/list"), (error) => error.code === "session_moved");
  } finally {
    other.close();
    await mux.close();
  }
});
