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
        await this.#mux._send(this.server, message);
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
        const onmessage = this.onmessage;
        if (this.#state === "started" && onmessage)
            callSafely(onmessage, message);
    }
    /** @internal The session under this transport ended: tells the SDK, which closes. */
    _fail(error) {
        if (this.#state !== "started")
            return;
        this.#state = "closed";
        const onerror = this.onerror;
        if (onerror)
            callSafely(onerror, error);
        this.onclose?.();
    }
}
