/**
 * The handle for one server on a connection: MCP requests and notifications to it,
 * listeners for what it sends, handlers for its requests to the client, and the end of
 * this connection's upstream session with it.
 * @module
 */
/** The newest MCP revision this library's `initialize` asks for by default. */
export const DEFAULT_PROTOCOL_VERSION = "2025-11-25";
/** One server of the gateway, as this connection uses it. Made by `mux.server(name)`. */
export class ServerHandle {
    /** The server's name. */
    name;
    #mux;
    /** Made by `mux.server(name)`. */
    constructor(mux, name) {
        this.#mux = mux;
        this.name = name;
    }
    /** The server's live state (`starting`, `ready`, `restarting`, `down`), if the gateway has it. */
    get state() {
        return this.#mux.servers.get(this.name);
    }
    /** `initialize` then `notifications/initialized`; resolves with the initialize result. */
    async initialize(options = {}) {
        const result = await this.request("initialize", {
            protocolVersion: options.protocolVersion ?? DEFAULT_PROTOCOL_VERSION,
            capabilities: options.capabilities ?? {},
            clientInfo: options.clientInfo ?? this.#mux._clientInfo,
        });
        await this.notify("notifications/initialized");
        return result;
    }
    /**
     * Sends a JSON-RPC request and resolves with its `result`; rejects with a `MuxError`
     * for a JSON-RPC error (`rpc_error` or the gateway's code), a timeout, an abort, a
     * refused resume (`session_lost`) or the end of the connection (`closed`).
     */
    request(method, params, options) {
        return this.#mux._request(this.name, method, params, options);
    }
    /** Sends a JSON-RPC notification; resolves once it is written to the socket. */
    notify(method, params) {
        const message = {
            jsonrpc: "2.0",
            method,
        };
        if (params !== undefined)
            message.params = params;
        return this.#mux._send(this.name, message);
    }
    /** Listens to the server's notifications of `method` (`"*"`: all); returns the remover. */
    onNotification(method, fn) {
        return this.#mux._onNotification(this.name, method, fn);
    }
    /**
     * Answers the server's requests of `method` (sampling, elicitation, roots...): the
     * handler's value is the `result`; a throw becomes a JSON-RPC error (-32603, or the
     * `rpcCode` of a thrown `MuxError`). Requests with no handler get -32601. Returns the
     * remover.
     */
    onRequest(method, handler) {
        return this.#mux._onRequest(this.name, method, handler);
    }
    /** Ends this connection's upstream session with the server (the `close` frame). */
    close() {
        return this.#mux._close(this.name);
    }
}
