// The client against the real gateway with the real server-everything: requests,
// notifications, progress, timeouts, aborts and listeners.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { MuxError } from "../dist/index.js";
import { connectTo, ready, startGateway, toolText } from "./harness.mjs";

let gateway;
let mux;

before(async () => {
  gateway = await startGateway();
  mux = await connectTo(gateway.url);
  await ready(mux, "everything");
  await mux.server("everything").initialize();
});

after(async () => {
  await mux?.close();
  await gateway?.stop();
});

test("welcome lists the servers and the session", () => {
  assert.match(mux.session, /^[a-z0-9-]{1,32}\.[0-9a-f]{32}$/);
  assert.deepEqual([...mux.servers.keys()].sort(), ["everything", "memory"]);
  assert.equal(mux.server("everything").state, "ready");
});

test("a request resolves with its result", async () => {
  const result = await mux.server("everything").request("tools/call", { name: "echo", arguments: { message: "hi" } });
  assert.equal(toolText(result), "Echo: hi");
});

test("progress arrives in order before the result", async () => {
  const seen = [];
  const result = await mux.server("everything").request(
    "tools/call",
    { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 5 } },
    { onprogress: (p) => seen.push(p) },
  );
  assert.match(toolText(result), /completed/);
  // mcp-proxy usually drops the last progress notification before a result.
  assert.ok(seen.length >= 4, `got ${seen.length} progress notifications`);
  assert.deepEqual(seen.map((p) => p.progress), [1, 2, 3, 4, 5].slice(0, seen.length));
  assert.ok(seen.every((p) => p.total === 5));
});

test("a gateway error rejects with its code", async () => {
  await assert.rejects(mux.server("nowhere").request("tools/list"), (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "unknown_server");
    assert.equal(error.rpcCode, -32000);
    return true;
  });
});

/** Resolves with the first outgoing frame for which `test` holds. */
function sent(test) {
  return new Promise((resolve) => {
    const off = mux.on("frame", ({ direction, frame }) => {
      if (direction === "out" && test(frame)) {
        off();
        resolve(frame);
      }
    });
  });
}

const isCancel = (frame) => frame.type === "rpc" && frame.message.method === "notifications/cancelled";
const longCall = { name: "trigger-long-running-operation", arguments: { duration: 30, steps: 30 } };

test("a timeout cancels the request upstream and rejects", async () => {
  const everything = mux.server("everything");
  const cancel = sent(isCancel);
  const request = sent((frame) => frame.type === "rpc" && frame.message.method === "tools/call");
  await assert.rejects(everything.request("tools/call", longCall, { timeout: 300 }), (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "timeout");
    return true;
  });
  const { message } = await cancel;
  assert.equal(message.params.requestId, (await request).message.id);
  assert.equal(message.params.reason, "timeout");
  // The connection goes on.
  const echo = await everything.request("tools/call", { name: "echo", arguments: { message: "still" } });
  assert.equal(toolText(echo), "Echo: still");
});

test("an abort cancels the request upstream and rejects", async () => {
  const everything = mux.server("everything");
  const controller = new AbortController();
  const cancel = sent(isCancel);
  const call = everything.request("tools/call", longCall, {
    signal: controller.signal,
    onprogress: () => controller.abort(new Error("enough")),
  });
  await assert.rejects(call, (error) => {
    assert.ok(error instanceof MuxError);
    assert.equal(error.code, "aborted");
    assert.equal(error.cause.message, "enough");
    return true;
  });
  assert.equal((await cancel).message.params.reason, "aborted");
});

test("an already aborted signal rejects without sending", async () => {
  let wrote = 0;
  const off = mux.on("frame", ({ direction }) => direction === "out" && wrote++);
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(
    mux.server("everything").request("tools/list", {}, { signal: controller.signal }),
    (error) => error.code === "aborted",
  );
  off();
  assert.equal(wrote, 0);
});

test("notification listeners see the server's notifications; removers remove", async () => {
  const everything = mux.server("everything");
  const all = [];
  const progress = [];
  const offAll = everything.onNotification("*", (_params, message) => all.push(message.method));
  const offProgress = everything.onNotification("notifications/progress", (params) => progress.push(params.progress));
  await everything.request(
    "tools/call",
    { name: "trigger-long-running-operation", arguments: { duration: 0.3, steps: 3 } },
    { onprogress: () => {} },
  );
  offAll();
  offProgress();
  assert.ok(progress.length >= 2, `${progress}`);
  assert.ok(all.filter((m) => m === "notifications/progress").length === progress.length);
  await everything.request(
    "tools/call",
    { name: "trigger-long-running-operation", arguments: { duration: 0.2, steps: 2 } },
    { onprogress: () => {} },
  );
  assert.ok(all.filter((m) => m === "notifications/progress").length === progress.length, "removed");
});

test("notify writes a notification; error frames reach error listeners", async () => {
  const out = sent((frame) => frame.type === "rpc" && frame.message.method === "notifications/roots/list_changed");
  await mux.server("everything").notify("notifications/roots/list_changed", {});
  assert.deepEqual((await out).message, { jsonrpc: "2.0", method: "notifications/roots/list_changed", params: {} });

  const error = new Promise((resolve) => {
    const off = mux.on("error", (e) => {
      off();
      resolve(e);
    });
  });
  await mux.server("nowhere").notify("notifications/initialized");
  const e = await error;
  assert.equal(e.code, "unknown_server");
  assert.equal(e.server, "nowhere");
  assert.match(e.message, /nowhere/);
});

test("close ends the upstream session: session open, then closed", async () => {
  const memory = mux.server("memory");
  await ready(mux, "memory");
  const opened = new Promise((resolve) => {
    const off = mux.on("session", (e) => e.server === "memory" && e.state === "open" && (off(), resolve(e)));
  });
  await memory.initialize();
  await opened;
  const closed = new Promise((resolve) => {
    const off = mux.on("session", (e) => e.server === "memory" && e.state === "closed" && (off(), resolve(e)));
  });
  await memory.close();
  assert.equal((await closed).state, "closed");
});
