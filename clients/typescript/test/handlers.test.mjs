// Server-to-client requests. mcp-proxy does not relay them, so the upstream here is a
// small Streamable HTTP server whose tool `ask` sends the client a request and returns
// the client's answer as its result.
import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, before, test } from "node:test";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { CreateMessageRequestSchema } from "@modelcontextprotocol/sdk/types.js";
import { MuxError } from "../dist/index.js";
import { connectTo, startGateway } from "./harness.mjs";

/** A Streamable HTTP MCP server with one tool, `ask`, that asks the client `method`. */
async function startAskingServer() {
  const waiting = new Map(); // id of a server-to-client request -> the tool call's stream
  let asked = 0;
  const server = createServer(async (req, res) => {
    if (req.method === "DELETE") return res.writeHead(200).end();
    if (req.method !== "POST") return res.writeHead(405).end(); // no standalone stream
    let body = "";
    for await (const chunk of req) body += chunk;
    const message = JSON.parse(body);
    if (message.method === "initialize") {
      const result = {
        protocolVersion: message.params.protocolVersion,
        capabilities: { tools: {} },
        serverInfo: { name: "asking", version: "1" },
      };
      res.writeHead(200, { "content-type": "application/json", "mcp-session-id": "asking-1" });
      return res.end(JSON.stringify({ jsonrpc: "2.0", id: message.id, result }));
    }
    if (message.method === "tools/call") {
      const id = `ask-${++asked}`;
      res.writeHead(200, { "content-type": "text/event-stream" });
      const { method, params } = message.params.arguments;
      res.write(`event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", id, method, params })}\n\n`);
      waiting.set(id, { res, callId: message.id });
      return;
    }
    if (message.id !== undefined && message.method === undefined) {
      // The client's answer: the tool returns it as text.
      const call = waiting.get(message.id);
      waiting.delete(message.id);
      res.writeHead(202).end();
      const result = { content: [{ type: "text", text: JSON.stringify(message) }] };
      call?.res.end(`event: message\ndata: ${JSON.stringify({ jsonrpc: "2.0", id: call.callId, result })}\n\n`);
      return;
    }
    res.writeHead(202).end(); // notifications
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { url: `http://127.0.0.1:${server.address().port}/mcp`, close: () => server.close() };
}

let upstream;
let gateway;
let mux;

before(async () => {
  upstream = await startAskingServer();
  gateway = await startGateway({ servers: { asking: { url: upstream.url } } });
  mux = await connectTo(gateway.url);
  await mux.server("asking").initialize();
});

after(async () => {
  await mux?.close();
  await gateway?.stop();
  upstream?.close();
});

/** Calls `ask` so that the server sends the client `method`; returns the client's answer. */
async function ask(server, method, params = {}) {
  const result = await server.request("tools/call", { name: "ask", arguments: { method, params } });
  return JSON.parse(result.content[0].text);
}

test("a handler's value answers the server's request", async () => {
  const asking = mux.server("asking");
  const seen = [];
  const off = asking.onRequest("sampling/createMessage", async (params) => {
    seen.push(params);
    return { role: "assistant", content: { type: "text", text: "hello" }, model: "test" };
  });
  const answer = await ask(asking, "sampling/createMessage", { messages: [], maxTokens: 5 });
  off();
  assert.deepEqual(seen, [{ messages: [], maxTokens: 5 }]);
  assert.equal(answer.jsonrpc, "2.0");
  assert.equal(answer.id, "ask-1");
  assert.deepEqual(answer.result, { role: "assistant", content: { type: "text", text: "hello" }, model: "test" });
});

test("a request with no handler is answered -32601", async () => {
  const answer = await ask(mux.server("asking"), "roots/list");
  assert.equal(answer.error.code, -32601);
  assert.match(answer.error.message, /roots\/list/);
  assert.equal(answer.result, undefined);
});

test("a handler that throws is answered with a JSON-RPC error", async () => {
  const asking = mux.server("asking");
  const offPlain = asking.onRequest("elicitation/create", () => {
    throw new Error("no one to ask");
  });
  const plain = await ask(asking, "elicitation/create");
  offPlain();
  assert.deepEqual(plain.error, { code: -32603, message: "no one to ask" });

  const offCoded = asking.onRequest("elicitation/create", () => {
    throw new MuxError("refused", "declined", { rpcCode: -32602 });
  });
  const coded = await ask(asking, "elicitation/create");
  offCoded();
  assert.deepEqual(coded.error, { code: -32602, message: "declined" });
});

test("through an SDK transport, the SDK client's own handlers answer", async () => {
  const client = new Client({ name: "sdk-over-mcpmux", version: "1" }, { capabilities: { sampling: {} } });
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    role: "assistant",
    content: { type: "text", text: "from the SDK" },
    model: "sdk",
  }));
  await client.connect(mux.transport("asking"));
  try {
    const result = await client.callTool({
      name: "ask",
      arguments: { method: "sampling/createMessage", params: { messages: [], maxTokens: 5 } },
    });
    const answer = JSON.parse(result.content[0].text);
    assert.equal(answer.result.content.text, "from the SDK");
  } finally {
    await client.close();
  }
});
