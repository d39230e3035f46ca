// The client against a real gateway with API keys: the key works in hello and in the
// subprotocol (also for a resume, which needs the key that opened the session), and a
// wrong or missing key is refused for good.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { MuxError } from "../dist/index.js";
import { connectTo, nextEvent, ready, startGateway, toolText } from "./harness.mjs";
import { startRelay } from "./relay.mjs";

const KEY = "test-key-0123456789abcdef";
let gateway;

before(async () => {
  gateway = await startGateway({ gateway: { apiKeys: [{ name: "tests", key: KEY, servers: "*" }] } });
});

after(async () => {
  await gateway?.stop();
});

for (const keyIn of ["hello", "subprotocol"]) {
  test(`the key in ${keyIn} opens a session, and resumes it after a cut`, async () => {
    const relay = await startRelay(gateway.port);
    const mux = await connectTo(relay.url, { token: KEY, keyIn, reconnect: { minDelayMs: 10, maxDelayMs: 100 } });
    try {
      await ready(mux, "everything");
      const everything = mux.server("everything");
      await everything.initialize();
      const resumed = nextEvent(mux, "connection", (e) => e.state === "open");
      relay.reset();
      assert.deepEqual(await resumed, { state: "open", resumed: true });
      const echo = await everything.request("tools/call", { name: "echo", arguments: { message: keyIn } });
      assert.equal(toolText(echo), `Echo: ${keyIn}`);
    } finally {
      await mux.close();
      await relay.stop();
    }
  });
}

test("a wrong or missing key in hello is refused with 4501", async () => {
  for (const token of ["not-the-key-0123456789", undefined]) {
    await assert.rejects(connectTo(gateway.url, { token }), (error) => {
      assert.ok(error instanceof MuxError);
      assert.equal(error.code, "connect_failed");
      assert.equal(error.data.code, 4501);
      return true;
    });
  }
});

test("a wrong key in the subprotocol is refused with HTTP 401, and never shown", async () => {
  await assert.rejects(connectTo(gateway.url, { token: "not-the-key-0123456789", keyIn: "subprotocol" }), (error) => {
    assert.equal(error.code, "connect_failed");
    assert.equal(error.data.status, 401);
    assert.doesNotMatch(error.message + JSON.stringify(error.data), /not-the-key/);
    return true;
  });
});
