/**
 * mcpmux: a client for the mcpmux gateway, one WebSocket to every MCP server.
 *
 * ```ts
 * import { connect } from "mcpmux";
 * const mux = await connect("ws://127.0.0.1:7300/ws");
 * const everything = mux.server("everything");
 * await everything.initialize();
 * const result = await everything.request("tools/call", { name: "echo", arguments: { message: "hi" } });
 * ```
 * @module
 */
import { Mux } from "./mux.js";
export { Mux } from "./mux.js";
export { ServerHandle, DEFAULT_PROTOCOL_VERSION } from "./server.js";
export { MuxTransport } from "./transport.js";
export { MuxError } from "./errors.js";
/**
 * Connects to the gateway at `url` (e.g. `ws://127.0.0.1:7300/ws`) and resolves once it
 * said `welcome`. Rejects (`connect_failed`) if that first socket fails; after that the
 * connection reconnects and resumes by itself.
 */
export async function connect(url, options = {}) {
    const mux = new Mux(url, options);
    await mux._start();
    return mux;
}
