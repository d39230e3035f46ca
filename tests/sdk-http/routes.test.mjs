// The official MCP TypeScript SDK, unmodified, through mcpmux's MCP routes over HTTP:
// Streamable HTTP on /servers/NAME/mcp and on /mcp with X-MCP-Server, the legacy
// HTTP+SSE transport on /servers/NAME/sse, progress, a resumed stream, and a key that
// may not use a server.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { CallToolResultSchema } from "@modelcontextprotocol/sdk/types.js";
import { startGateway, toolText } from "./harness.mjs";

const KEY = "sdk-http-key-0123456789abcdef";
const NARROW = "narrow-key-0123456789abcdefgh";
const auth = (key) => ({ requestInit: { headers: { Authorization: `Bearer ${key}` } } });

let gateway;
const clients = [];

before(async () => {
  gateway = await startGateway({
    gateway: {
      apiKeys: [
        { name: "sdk", key: KEY, servers: "*" },
        { name: "narrow", key: NARROW, servers: ["memory"] },
      ],
    },
  });
});

after(async () => {
  await Promise.all(clients.map((client) => client.close().catch(() => {})));
  await gateway?.stop();
});

/** A connected SDK client over `transport`, closed after the tests. */
async function connect(transport, name = "sdk-http-test") {
  const client = new Client({ name, version: "1" });
  clients.push(client);
  await client.connect(transport);
  return client;
}

const streamable = (path, options = auth(KEY)) => new StreamableHTTPClientTransport(new URL(path, gateway.base), options);

/** Calls the long-running tool and collects its progress. */
async function longOperation(client, steps = 5) {
  const progress = [];
  const result = await client.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 1, steps } },
    undefined,
    { onprogress: (p) => progress.push(p.progress) },
  );
  return { result, progress };
}

function assertProgressed({ result, progress }) {
  assert.match(toolText(result), /completed/i);
  assert.ok(progress.length > 0, "progress arrived before the result");
  assert.ok(progress.every((p, i) => i === 0 || p > progress[i - 1]), `in order: ${progress}`);
}

test("Streamable HTTP on /servers/NAME/mcp: tools listed and called, with progress", async () => {
  const transport = streamable("/servers/everything/mcp");
  const client = await connect(transport);
  assert.equal(client.getServerVersion().name, "mcp-servers/everything");
  assert.ok(transport.sessionId, "the session id reached the client");

  const { tools } = await client.listTools();
  assert.ok(tools.some((tool) => tool.name === "echo"));
  assert.equal(toolText(await client.callTool({ name: "echo", arguments: { message: "over http" } })), "Echo: over http");
  assertProgressed(await longOperation(client));

  // DELETE ends the session; the server then answers 404 for it, through the gateway.
  const sessionId = transport.sessionId;
  await transport.terminateSession();
  const stale = streamable("/servers/everything/mcp", { ...auth(KEY), sessionId });
  await stale.start();
  await assert.rejects(stale.send({ jsonrpc: "2.0", id: 99, method: "tools/list" }), (error) => {
    assert.equal(error.code, 404);
    return true;
  });
  await stale.close();
});

test("Streamable HTTP on /mcp with X-MCP-Server: each header reaches its server", async () => {
  const byHeader = (server) => streamable("/mcp", { requestInit: { headers: { Authorization: `Bearer ${KEY}`, "X-MCP-Server": server } } });
  const everything = await connect(byHeader("everything"));
  const memory = await connect(byHeader("memory"));
  assert.equal(everything.getServerVersion().name, "mcp-servers/everything");
  assert.equal(memory.getServerVersion().name, "memory-server");

  assertProgressed(await longOperation(everything));
  const entity = { name: "mcpmux", entityType: "gateway", observations: ["over HTTP"] };
  await memory.callTool({ name: "create_entities", arguments: { entities: [entity] } });
  const graph = await memory.callTool({ name: "read_graph", arguments: {} });
  assert.deepEqual(graph.structuredContent.entities, [entity]);
});

test("the legacy SSE transport on /servers/NAME/sse: tools listed and called, with progress", async () => {
  const transport = new SSEClientTransport(new URL("/servers/everything/sse", gateway.base), auth(KEY));
  const client = await connect(transport);
  assert.equal(client.getServerVersion().name, "mcp-servers/everything");
  const { tools } = await client.listTools();
  assert.ok(tools.some((tool) => tool.name === "trigger-long-running-operation"));
  assert.equal(toolText(await client.callTool({ name: "echo", arguments: { message: "over sse" } })), "Echo: over sse");
  assertProgressed(await longOperation(client));
});

test("a call's stream broken mid-way is resumed with Last-Event-ID on a new transport", async () => {
  const first = streamable("/servers/everything/mcp");
  const client = await connect(first, "sdk-resume-1");
  const tokens = [];
  let broken;
  const cut = new Promise((resolve) => (broken = resolve));
  const call = client.callTool(
    { name: "trigger-long-running-operation", arguments: { duration: 2, steps: 8 } },
    undefined,
    {
      onresumptiontoken: (token) => tokens.push(token),
      onprogress: () => broken(),
    },
  );
  call.catch(() => {});
  await cut;
  const seen = tokens.length;
  const lastToken = tokens.at(-1);
  const sessionId = first.sessionId;
  await first.close(); // aborts the call's stream: the call goes on upstream

  const second = streamable("/servers/everything/mcp", { ...auth(KEY), sessionId });
  const resumed = await connect(second, "sdk-resume-2");
  // The SDK resumes with GET and Last-Event-ID, and takes the replayed result as the
  // answer to this request.
  const result = await resumed.request(
    { method: "tools/call", params: { name: "trigger-long-running-operation", arguments: { duration: 2, steps: 8 } } },
    CallToolResultSchema,
    { resumptionToken: lastToken },
  );
  assert.match(toolText(result), /Long running operation completed/i);
  assert.ok(seen > 0, "events with ids came before the break");
});

test("a key that may not use a server gets 404 from the SDK's first request", async () => {
  await assert.rejects(connect(streamable("/servers/everything/mcp", auth(NARROW))), (error) => {
    assert.equal(error.code, 404);
    assert.match(error.message, /no server is named/);
    assert.match(error.message, /"gateway":"unknown_server"/);
    return true;
  });
  const memory = await connect(streamable("/servers/memory/mcp", auth(NARROW)));
  assert.equal(memory.getServerVersion().name, "memory-server");
});
