/**
 * The handle for one server on a connection: MCP requests and notifications to it,
 * listeners for what it sends, handlers for its requests to the client, and the end of
 * this connection's upstream session with it.
 * @module
 */
import type { Mux, NotificationListener, RequestHandler } from "./mux.js";
/** The newest MCP revision this library's `initialize` asks for by default. */
export declare const DEFAULT_PROTOCOL_VERSION = "2025-11-25";
/** One progress notification of a request. */
export interface Progress {
    progress: number;
    total?: number;
    message?: string;
}
/** How one request is bounded and observed. */
export interface RequestOptions {
    /** Milliseconds; on expiry the server gets `notifications/cancelled` and the call rejects (`timeout`). */
    timeout?: number;
    /** On abort the server gets `notifications/cancelled` and the call rejects (`aborted`). */
    signal?: AbortSignal;
    /** Called for each progress notification; adds `_meta.progressToken` to the request. */
    onprogress?: (progress: Progress) => void;
}
/** What `initialize` sends; every field has a default. */
export interface InitializeOptions {
    protocolVersion?: string;
    capabilities?: object;
    clientInfo?: {
        name: string;
        version: string;
    };
}
/** One server of the gateway, as this connection uses it. Made by `mux.server(name)`. */
export declare class ServerHandle {
    #private;
    /** The server's name. */
    readonly name: string;
    /** Made by `mux.server(name)`. */
    constructor(mux: Mux, name: string);
    /** The server's live state (`starting`, `ready`, `restarting`, `down`), if the gateway has it. */
    get state(): string | undefined;
    /** `initialize` then `notifications/initialized`; resolves with the initialize result. */
    initialize(options?: InitializeOptions): Promise<any>;
    /**
     * Sends a JSON-RPC request and resolves with its `result`; rejects with a `MuxError`
     * for a JSON-RPC error (`rpc_error` or the gateway's code), a timeout, an abort, a
     * refused resume (`session_lost`) or the end of the connection (`closed`).
     */
    request<T = any>(method: string, params?: object, options?: RequestOptions): Promise<T>;
    /** Sends a JSON-RPC notification; resolves once it is written to the socket. */
    notify(method: string, params?: object): Promise<void>;
    /** Listens to the server's notifications of `method` (`"*"`: all); returns the remover. */
    onNotification(method: string, fn: NotificationListener): () => void;
    /**
     * Answers the server's requests of `method` (sampling, elicitation, roots...): the
     * handler's value is the `result`; a throw becomes a JSON-RPC error (-32603, or the
     * `rpcCode` of a thrown `MuxError`). Requests with no handler get -32601. Returns the
     * remover.
     */
    onRequest(method: string, handler: RequestHandler): () => void;
    /** Ends this connection's upstream session with the server (the `close` frame). */
    close(): Promise<void>;
}
