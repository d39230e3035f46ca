/**
 * The multiplexer a program holds: it routes the gateway's frames to the callers and
 * listeners of each server (responses to pending requests, progress to `onprogress`,
 * notifications to listeners, server-to-client requests to handlers or an SDK
 * transport), tracks server states and upstream sessions, and settles every pending
 * request exactly once: by its response, its timeout, its abort signal, a refused
 * resume (`session_lost`) or the end of the connection.
 * @module
 */
import { type ConnectOptions, type ConnectionEvent } from "./connection.js";
import { ServerHandle } from "./server.js";
import { MuxTransport } from "./transport.js";
/** The events of a {@link Mux}, by name. */
export interface MuxEvents {
    /** A server's live state changed (`starting`, `ready`, `restarting`, `down`). */
    status: {
        server: string;
        state: string;
    };
    /** This connection's upstream session with a server opened, was lost or closed. */
    session: {
        server: string;
        state: "open" | "lost" | "closed";
        reason?: string;
    };
    /** The connection's own state. */
    connection: ConnectionEvent;
    /** Every frame, both ways, for consoles and debugging (the key in `hello` is masked). */
    frame: {
        direction: "in" | "out";
        frame: any;
    };
    /** An `error` frame from the gateway. */
    error: {
        code: string;
        message: string;
        server?: string;
        ref?: unknown;
    };
}
/** Handles one server-to-client request; its value is the JSON-RPC `result`. */
export type RequestHandler = (params: any, message: any) => unknown | Promise<unknown>;
/** Receives one notification's `params` and the whole message. */
export type NotificationListener = (params: any, message: any) => void;
/**
 * One connection to an mcpmux gateway, shared by every server it carries.
 * Made by {@link connect}.
 */
export declare class Mux {
    #private;
    /** Made by {@link connect}, which also opens it. */
    constructor(url: string, options?: ConnectOptions);
    /** The current client session's id (it changes when a resume is refused). */
    get session(): string | undefined;
    /** Every server the gateway offers, by name, with its live state. */
    get servers(): ReadonlyMap<string, string>;
    /** The handle for the server `name` (the same object for the same name). */
    server(name: string): ServerHandle;
    /**
     * An MCP SDK `Transport` to the server `name` over this connection:
     * `await new Client(info).connect(mux.transport("everything"))`. One started
     * transport per server at a time.
     */
    transport(name: string): MuxTransport;
    /** Adds a listener; the returned function removes it. */
    on<K extends keyof MuxEvents>(event: K, fn: (e: MuxEvents[K]) => void): () => void;
    /**
     * Closes the socket with 1000: the gateway ends the session and its upstream
     * sessions. Pending requests reject with `closed`.
     */
    close(): Promise<void>;
}
