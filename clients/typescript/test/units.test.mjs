// The small pure parts: backoff bounds, the key's subprotocol encoding, the resume URL,
// and delivery one task at a time.
import assert from "node:assert/strict";
import { test } from "node:test";
import { backoffDelay, closeAction, macrotaskScheduler, reconnectDelay } from "../dist/timing.js";
import { base64url, describeUrl, upgradeUrl } from "../dist/wire.js";
import { MuxError } from "../dist/index.js";

test("backoff is full jitter under an exponential ceiling capped at the maximum", () => {
  assert.equal(backoffDelay(0, 250, 10_000, () => 0), 0);
  assert.equal(backoffDelay(0, 250, 10_000, () => 0.999), 249);
  assert.equal(backoffDelay(3, 250, 10_000, () => 0.5), 1000); // ceiling 2000
  assert.equal(backoffDelay(10, 250, 10_000, () => 0.5), 5000); // capped at 10000
  assert.equal(backoffDelay(5000, 250, 10_000, () => 0.999), 9990); // no overflow
});

test("the key as a subprotocol is base64url of its UTF-8 bytes, without padding", () => {
  for (const key of ["k", "ke", "key", "s3cret/key+=", "clé ü 🔑", "x".repeat(100)]) {
    assert.equal(base64url(key), Buffer.from(key, "utf8").toString("base64url"));
  }
  assert.match(base64url("??>>"), /^[A-Za-z0-9_-]+$/);
});

test("a resuming upgrade URL names the session; errors name no credentials or query", () => {
  assert.equal(upgradeUrl("ws://127.0.0.1:7300/ws", undefined), "ws://127.0.0.1:7300/ws");
  assert.equal(upgradeUrl("ws://127.0.0.1:7300/ws", "ab12"), "ws://127.0.0.1:7300/ws?session=ab12");
  assert.equal(upgradeUrl("wss://h.example/ws?session=old&x=1", "new"), "wss://h.example/ws?session=new&x=1");
  // Ids name their instance: not percent-encoded, so a balancer's map of the raw query
  // matches them.
  const id = "mcpmux-0.5f0c8a61d2e94b7f9a3c1e0d8b6a4f21";
  assert.equal(upgradeUrl("wss://h.example/ws", id), `wss://h.example/ws?session=${id}`);
  assert.equal(describeUrl("wss://user:pw@h.example:8443/ws?session=s#f"), "wss://h.example:8443/ws");
});

test("a JSON-RPC error becomes a MuxError with the gateway's code, else rpc_error", () => {
  const gateway = MuxError.fromRpc({ code: -32001, message: "slow", data: { gateway: "timeout", server: "a" } });
  assert.equal(gateway.code, "timeout");
  assert.equal(gateway.rpcCode, -32001);
  assert.deepEqual(gateway.data, { gateway: "timeout", server: "a" });
  const server = MuxError.fromRpc({ code: -32602, message: "bad params" });
  assert.equal(server.code, "rpc_error");
  assert.equal(server.message, "bad params");
  assert.equal(MuxError.fromRpc("nonsense").code, "rpc_error");
});

test("scheduled tasks run in order, each on its own task after the previous one's microtasks", async () => {
  const schedule = macrotaskScheduler();
  const log = [];
  await new Promise((resolve) => {
    for (let i = 0; i < 3; i++) {
      schedule(() => {
        log.push(`task ${i}`);
        queueMicrotask(() => log.push(`microtask ${i}`));
        if (i === 2) setImmediate(resolve);
      });
    }
  });
  assert.deepEqual(log, ["task 0", "microtask 0", "task 1", "microtask 1", "task 2", "microtask 2"]);
});

test("one close-code table: what reconnects, what slowly, what never", () => {
  const table = {
    reconnect: [1000, 1001, 1006, 1011, 1012, 1013, 1014, 4000, 4001, 4003, 4499],
    slow: [4029],
    moved: [4002],
    fatal: [1002, 1003, 1007, 1008, 1009, 1010, 4500, 4501, 4508, 4999],
  };
  for (const [action, codes] of Object.entries(table)) {
    for (const code of codes) assert.equal(closeAction(code), action, `close code ${code}`);
  }
});

test("after 4029 the backoff starts at its highest", () => {
  assert.equal(reconnectDelay("slow", 0, 250, 10_000, () => 0), 5000);
  assert.equal(reconnectDelay("slow", 0, 250, 10_000, () => 0.999), 9995);
  assert.equal(reconnectDelay("reconnect", 0, 250, 10_000, () => 0.999), 249);
});
