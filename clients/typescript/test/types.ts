// Compiled (never run) by build.test.mjs: the published types fit the MCP SDK and the
// documented API.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import type { Transport as SdkTransport } from "@modelcontextprotocol/sdk/shared/transport.js";
import { connect, MuxError, type Mux, type ServerHandle } from "../dist/index.js";

export async function typesFit(WebSocket: unknown): Promise<void> {
  const mux: Mux = await connect("ws://127.0.0.1:7300/ws", {
    WebSocket,
    token: "key",
    keyIn: "subprotocol",
    client: { name: "types", version: "1" },
    reconnect: { minDelayMs: 100, maxDelayMs: 1000, maxAttempts: 5, maxFailures: 3 },
    ackEvery: 50,
  });
  const transport: SdkTransport = mux.transport("everything");
  await new Client({ name: "types", version: "1" }).connect(transport);

  const everything: ServerHandle = mux.server("everything");
  const state: string | undefined = everything.state;
  const init: unknown = await everything.initialize({ protocolVersion: "2025-11-25" });
  const tools = await everything.request<{ tools: unknown[] }>("tools/list", {}, {
    timeout: 1000,
    signal: new AbortController().signal,
    onprogress: (p) => p.progress + (p.total ?? 0),
  });
  await everything.notify("notifications/initialized");
  const offNotification: () => void = everything.onNotification("*", (params, message) => [params, message]);
  const offRequest: () => void = everything.onRequest("roots/list", async () => ({ roots: [] }));
  const offs: Array<() => void> = [
    mux.on("status", (e) => e.server + e.state),
    mux.on("session", (e) => (e.state === "lost" ? e.reason : e.server)),
    mux.on("connection", (e) => [e.state, e.resumed, e.code, e.reason, e.attempt]),
    mux.on("frame", (e) => (e.direction === "in" ? e.frame : null)),
    mux.on("error", (e) => [e.code, e.message, e.server, e.ref]),
  ];
  const servers: ReadonlyMap<string, string> = mux.servers;
  const session: string | undefined = mux.session;
  const error = new MuxError("code", "message");
  const code: string = error.code;
  void [state, init, tools, offNotification, offRequest, offs, servers, session, code];
  await everything.close();
  await mux.close();
}
