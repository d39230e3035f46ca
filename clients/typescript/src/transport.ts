/**
 * The official MCP TypeScript SDK's `Transport` over a mux: one server's messages, so
 * that `new Client(info).connect(mux.transport("everything"))` works unchanged and
 * several SDK clients share one WebSocket. Messages arrive one per event-loop task, in
 * order, so the SDK sees a request's progress before its result.
 * @module
 */

import { MuxError } from "./errors.js";
import { callSafely } from "./events.js";
import type { Mux } from "./mux.js";
import type { JsonRpcMessage } from "./wire.js";

/**
 * The SDK's `Transport` contract (`@modelcontextprotocol/sdk/shared/transport.js`),
 * restated so that this library needs no dependency on the SDK.
 */
export interface Transport {
  start(): Promise<void>;
  send(message: any, options?: any): Promise<void>;
  close(): Promise<void>;
  onclose?: (() => void) | undefined;
  onerror?: ((error: Error) => void) | undefined;
  onmessage?: ((message: any, extra?: any) => void) | undefined;
  sessionId?: string | undefined;
  setProtocolVersion?: ((version: string) => void) | undefined;
}

/** One server's SDK transport on a mux. Made by `mux.transport(name)`. */
export class MuxTransport implements Transport {
  onclose?: (() => void) | undefined;
  onerror?: ((error: Error) => void) | undefined;
  onmessage?: ((message: any, extra?: any) => void) | undefined;
  /**
   * Left undefined: the SDK's `Client` skips `initialize` on a transport that has one,
   * and the gateway's upstream session needs no id from the client.
   */
  sessionId?: string | undefined;
  /** The server this transport talks to. */
  readonly server: string;
  readonly #mux: Mux;
  #state: "new" | "started" | "closed" = "new";
  #protocolVersion: string | undefined;
  /**
   * Ids of the SDK's requests awaiting a response. A response to any other id (one the
   * SDK cancelled, or one failed here) is dropped: the SDK would call it an error.
   */
  readonly #inFlight = new Set<unknown>();

  /** Made by `mux.transport(name)`. */
  constructor(mux: Mux, server: string) {
    this.#mux = mux;
    this.server = server;
  }

  /** The MCP revision the SDK negotiated, once it said. */
  get protocolVersion(): string | undefined {
    return this.#protocolVersion;
  }

  /** Starts receiving the server's messages (one started transport per server). */
  async start(): Promise<void> {
    if (this.#state !== "new") throw new Error("mcpmux: this transport was already started");
    this.#mux._attach(this.server, this);
    this.#state = "started";
  }

  /** Carries one JSON-RPC message to the server. */
  async send(message: any): Promise<void> {
    if (this.#state !== "started") {
      throw new MuxError("closed", `the transport for ${this.server} is not started or is closed`);
    }
    const { id, method } = (message ?? {}) as JsonRpcMessage;
    const isRequest = typeof method === "string" && id !== undefined && id !== null;
    if (isRequest) this.#inFlight.add(id);
    if (method === "notifications/cancelled") this.#inFlight.delete(message.params?.requestId);
    try {
      await this.#mux._send(this.server, message as JsonRpcMessage);
    } catch (error) {
      if (isRequest) this.#inFlight.delete(id);
      throw error;
    }
  }

  /** Ends the upstream session (the `close` frame) and calls `onclose`. */
  async close(): Promise<void> {
    if (this.#state === "closed") return;
    const started = this.#state === "started";
    this.#state = "closed";
    this.#mux._detach(this.server, this);
    if (started) await this.#mux._close(this.server);
    this.onclose?.();
  }

  setProtocolVersion(version: string): void {
    this.#protocolVersion = version;
  }

  /** @internal A message from the server. */
  _deliver(message: JsonRpcMessage): void {
    if (message.method === undefined && !this.#inFlight.delete(message.id)) return;
    const onmessage = this.onmessage;
    if (this.#state === "started" && onmessage) callSafely(onmessage, message);
  }

  /** @internal The SDK's request `id` cannot be carried: it is answered with `error`. */
  _giveUp(id: unknown, error: MuxError): void {
    if (!this.#inFlight.has(id)) return;
    this._deliver({
      jsonrpc: "2.0",
      id: id as string | number,
      error: { code: -32000, message: error.message, data: { gateway: error.code, server: this.server } },
    });
  }

  /** @internal The session under this transport ended: tells the SDK, which closes. */
  _fail(error: MuxError): void {
    if (this.#state !== "started") return;
    const onerror = this.onerror;
    if (onerror) callSafely(onerror, error);
    this._ended();
  }

  /** @internal The connection was closed as the caller asked: the SDK closes, no error. */
  _ended(): void {
    if (this.#state !== "started") return;
    this.#state = "closed";
    this.#inFlight.clear();
    this.onclose?.();
  }
}
