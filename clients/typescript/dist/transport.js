/**
 * The official MCP TypeScript SDK's `Transport` over a mux: one server's messages, so
 * that `new Client(info).connect(mux.transport("everything"))` works unchanged and
 * several SDK clients share one WebSocket. Messages arrive one per event-loop task, in
 * order, so the SDK sees a request's progress before its result.
 * @module
 */
import { MuxError } from "./errors.js";
import { callSafely } from "./events.js";
/** One server's SDK transport on a mux. Made by `mux.transport(name)`. */
export class MuxTransport {
    onclose;
    onerror;
    onmessage;
    /**
     * Left undefined: the SDK's `Client` skips `initialize` on a transport that has one,
     * and the gateway's upstream session needs no id from the client.
     */
    sessionId;
    /** The server this transport talks to. */
    server;
    #mux;
    #state = "new";
    #protocolVersion;
    /**
     * Ids of the SDK's requests awaiting a response. A response to any other id (one the
     * SDK cancelled, or one failed here) is dropped: the SDK would call it an error.
     */
    #inFlight = new Set();
    /** Made by `mux.transport(name)`. */
    constructor(mux, server) {
        this.#mux = mux;
        this.server = server;
    }
    /** The MCP revision the SDK negotiated, once it said. */
    get protocolVersion() {
        return this.#protocolVersion;
    }
    /** Starts receiving the server's messages (one started transport per server). */
    async start() {
        if (this.#state !== "new")
            throw new Error("mcpmux: this transport was already started");
        this.#mux._attach(this.server, this);
        this.#state = "started";
    }
    /** Carries one JSON-RPC message to the server. */
    async send(message) {
        if (this.#state !== "started") {
            throw new MuxError("closed", `the transport for ${this.server} is not started or is closed`);
        }
        const { id, method } = (message ?? {});
        const isRequest = typeof method === "string" && id !== undefined && id !== null;
        if (isRequest)
            this.#inFlight.add(id);
        if (method === "notifications/cancelled")
            this.#inFlight.delete(message.params?.requestId);
        try {
            await this.#mux._send(this.server, message);
        }
        catch (error) {
            if (isRequest)
                this.#inFlight.delete(id);
            throw error;
        }
    }
    /** Ends the upstream session (the `close` frame) and calls `onclose`. */
    async close() {
        if (this.#state === "closed")
            return;
        const started = this.#state === "started";
        this.#state = "closed";
        this.#mux._detach(this.server, this);
        if (started)
            await this.#mux._close(this.server);
        this.onclose?.();
    }
    setProtocolVersion(version) {
        this.#protocolVersion = version;
    }
    /** @internal A message from the server. */
    _deliver(message) {
        if (message.method === undefined && !this.#inFlight.delete(message.id))
            return;
        const onmessage = this.onmessage;
        if (this.#state === "started" && onmessage)
            callSafely(onmessage, message);
    }
    /** @internal The SDK's request `id` cannot be carried: it is answered with `error`. */
    _giveUp(id, error) {
        if (!this.#inFlight.has(id))
            return;
        this._deliver({
            jsonrpc: "2.0",
            id: id,
            error: { code: -32000, message: error.message, data: { gateway: error.code, server: this.server } },
        });
    }
    /** @internal The session under this transport ended: tells the SDK, which closes. */
    _fail(error) {
        if (this.#state !== "started")
            return;
        const onerror = this.onerror;
        if (onerror)
            callSafely(onerror, error);
        this._ended();
    }
    /** @internal The connection was closed as the caller asked: the SDK closes, no error. */
    _ended() {
        if (this.#state !== "started")
            return;
        this.#state = "closed";
        this.#inFlight.clear();
        this.onclose?.();
    }
}
