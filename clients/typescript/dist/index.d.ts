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
import type { ConnectOptions } from "./connection.js";
import { Mux } from "./mux.js";
export { Mux } from "./mux.js";
export type { MuxEvents, NotificationListener, RequestHandler } from "./mux.js";
export { ServerHandle, DEFAULT_PROTOCOL_VERSION } from "./server.js";
export type { InitializeOptions, Progress, RequestOptions } from "./server.js";
export { MuxTransport } from "./transport.js";
export type { Transport } from "./transport.js";
export { MuxError } from "./errors.js";
export type { ConnectOptions, ConnectionEvent } from "./connection.js";
export type { JsonRpcMessage, RequestId } from "./wire.js";
/**
 * Connects to the gateway at `url` (e.g. `ws://127.0.0.1:7300/ws`) and resolves once it
 * said `welcome`. Rejects (`connect_failed`) if that first socket fails; after that the
 * connection reconnects and resumes by itself.
 */
export declare function connect(url: string, options?: ConnectOptions): Promise<Mux>;
