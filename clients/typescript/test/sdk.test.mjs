// The official MCP TypeScript SDK's Client over mux.transport(): server-everything and
// server-memory driven through ONE WebSocket.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { connectTo, ready, startGateway } from "./harness.mjs";

let gateway;
let mux;
let everything;
let memory;
const sockets = [];

before(async () => {
  gateway = await startGateway();
  mux = await connectTo(gateway.url);
  mux.on("connection", (e) => sockets.push(e));
  await Promise.all([ready(mux, "everything"), ready(mux, "memory")]);
  everything = new Client({ name: "sdk-everything", version: "1" });
  memory = new Client({ name: "sdk-memory", version: "1" });
  await Promise.all([everything.connect(mux.transport("everything")), memory.connect(mux.transport("memory"))]);
});

after(async () => {
  await everything?.close();
  await memory?.close();
  await mux?.close();
  await gateway?.stop();
});

test("SDK clients list and call tools on two servers over one WebSocket", async () => {
  assert.equal(everything.getServerVersion().name, "mcp-servers/everything");
  assert.equal(memory.getServerVersion().name, "memory-server");

  const [everythingTools, memoryTools] = await Promise.all([everything.listTools(), memory.listTools()]);
  assert.ok(everythingTools.tools.some((tool) => tool.name === "echo"));
  assert.ok(memoryTools.tools.some((tool) => tool.name === "create_entities"));

  const echo = await everything.callTool({ name: "echo", arguments: { message: "one socket" } });
  assert.equal(echo.content[0].text, "Echo: one socket");

  const entity = { name: "mcpmux", entityType: "gateway", observations: ["one WebSocket"] };
  await memory.callTool({ name: "create_entities", arguments: { entities: [entity] } });
  const graph = await memory.callTool({ name: "read_graph", arguments: {} });
  assert.deepEqual(graph.structuredContent.entities, [entity]);

  assert.deepEqual(sockets, [], "no reconnect: everything went over the one socket");
});

test("the SDK sees every progress notification before the result", async () => {
  // With no delay between steps, the progress notifications and the result reach the
  // client together: handed to the SDK in one task, it would drop progress.
  const relayed = [];
  const off = mux.on("frame", ({ direction, frame }) => {
    if (direction === "in" && frame.message?.method === "notifications/progress") {
      relayed.push(frame.message.params.progress);
    }
  });
  const seen = [];
  const result = await everything.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 0, steps: 10 } },
    undefined,
    { onprogress: (p) => seen.push(p.progress) },
  );
  off();
  assert.match(result.content[0].text, /completed/);
  assert.ok(relayed.length > 0, "the gateway relayed progress");
  assert.deepEqual(seen, relayed);
});

test("closing an SDK client ends its upstream session and frees the server for another", async () => {
  const closed = new Promise((resolve) => {
    const off = mux.on("session", (e) => e.server === "memory" && e.state === "closed" && (off(), resolve()));
  });
  await memory.close();
  await closed;
  memory = new Client({ name: "sdk-memory-again", version: "1" });
  await memory.connect(mux.transport("memory"));
  const tools = await memory.listTools();
  assert.ok(tools.tools.length > 0);
});

test("closing the mux closes SDK clients without an error", async () => {
  const own = await connectTo(gateway.url);
  const client = new Client({ name: "sdk-closing", version: "1" });
  await client.connect(own.transport("everything"));
  await client.ping();
  const errors = [];
  client.onerror = (error) => errors.push(error);
  const closed = new Promise((resolve) => (client.onclose = resolve));
  await own.close();
  await closed;
  assert.deepEqual(errors, [], "a close the caller asked for is not an error");
});
