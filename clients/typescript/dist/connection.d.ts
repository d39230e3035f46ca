/**
 * One logical connection to the gateway across any number of sockets: the handshake
 * (`hello`/`welcome`, the key in `hello` or in a subprotocol), reconnection with
 * full-jitter backoff and resume (`last_seq`, `?session=`), the close-code rules, acks,
 * application-level pings, the queue of frames written while no socket is open, the
 * frames written but not yet known to be read (resent after a resume, from
 * `welcome.received`), and the in-order, one-per-task delivery of gateway frames to its
 * owner.
 * @module
 */
import { MuxError } from "./errors.js";
import { type ClientFrame, type GatewayFrame } from "./wire.js";
/** How `connect` reaches the gateway. */
export interface ConnectOptions {
    /**
     * API key. Sent in `hello` as `token` (or, with `keyIn: "subprotocol"`, as the
     * subprotocol `mcpmux.bearer.<base64url(key), no padding>`); never in the URL.
     */
    token?: string;
    /** Where the key goes; default `"hello"`. */
    keyIn?: "hello" | "subprotocol";
    /** Who this client is, for the gateway's logs. */
    client?: {
        name: string;
        version?: string;
    };
    /** A WebSocket constructor (e.g. `ws`'s on Node 20); default `globalThis.WebSocket`. */
    WebSocket?: any;
    /**
     * Reconnect after a drop and resume the session (default true). Delays are full-jitter
     * exponential backoff: random in [0, min(maxDelayMs, minDelayMs * 2^attempt)); after
     * 4029, in the upper half of maxDelayMs. The attempt count starts again only once a
     * socket has stayed up 15 s. Defaults: minDelayMs 250, maxDelayMs 10000, maxAttempts
     * Infinity, maxFailures 10 (attempts in a row that end before a `welcome`: a gateway
     * that is gone, or one that refuses the upgrade, which browsers cannot tell apart).
     */
    reconnect?: boolean | {
        minDelayMs?: number;
        maxDelayMs?: number;
        maxAttempts?: number;
        maxFailures?: number;
    };
    /** Send an `ack` after this many sequenced frames (default 100). */
    ackEvery?: number;
}
/** A change of the connection's state. */
export interface ConnectionEvent {
    state: "connecting" | "open" | "reconnecting" | "closed";
    /** With `open` after a drop: whether the gateway resumed the session. */
    resumed?: boolean;
    /** The close code of the socket that ended (1006 when it ended without a close frame). */
    code?: number;
    reason?: string;
    /** With `reconnecting`: the number of the attempt about to be made (1, 2, ...). */
    attempt?: number;
}
/** What a connection hands to its owner, in wire order, one call per event-loop task. */
export interface ConnectionSink {
    /** A `welcome`: `first` on the first socket, `resumed` when the session went on. */
    welcome(frame: GatewayFrame, resumed: boolean, first: boolean): void;
    /** Any other gateway frame. */
    frame(frame: GatewayFrame): void;
    /** Every frame in either direction (`hello` with its key masked). */
    wire(direction: "in" | "out", frame: unknown): void;
    connection(event: ConnectionEvent): void;
    /** The connection ended for good; nothing more will be delivered. */
    ended(error: MuxError): void;
    /**
     * A frame written but not yet known to be read was given up to keep the resend buffer
     * bounded: if the socket it went on was already dead, it is lost.
     */
    unconfirmed(frame: ClientFrame, error: MuxError): void;
}
/** Frames written while no socket is open wait here, at most this many (`queue_full`). */
export declare const MAX_QUEUED_FRAMES = 1024;
/** ... and at most this many bytes of them (`queue_full`). */
export declare const MAX_QUEUED_BYTES: number;
/**
 * Frames written but not yet known to be read are kept for a resend, at most this many;
 * beyond it the oldest is given up (its request rejects with `resend_overflow`).
 */
export declare const MAX_UNCONFIRMED_FRAMES = 1024;
/** ... and at most this many bytes of them. */
export declare const MAX_UNCONFIRMED_BYTES: number;
/**
 * Gateway frames waiting for their task: beyond this many (or bytes), a socket that can
 * pause reading (Node's `ws`) is paused until half of them are delivered...
 */
export declare const INBOX_PAUSE_FRAMES = 1000;
export declare const INBOX_PAUSE_BYTES: number;
/**
 * ... and one that cannot (browsers) is closed at this many (or bytes), ending the
 * connection with `inbox_full`: the application does not keep up with the gateway.
 */
export declare const INBOX_MAX_FRAMES = 10000;
export declare const INBOX_MAX_BYTES: number;
export declare class Connection {
    #private;
    constructor(url: string, options: ConnectOptions, sink: ConnectionSink);
    /** The current state. */
    get state(): ConnectionEvent["state"];
    /** Whether frames are written now (a socket has its `welcome`); else they are queued. */
    get isOpen(): boolean;
    /** The client session's id, once a `welcome` named it. */
    get session(): string | undefined;
    /** Opens the first socket; resolves with its `welcome`, rejects if it fails. */
    start(): Promise<void>;
    /**
     * Writes `frame` now if a session is open, else queues it for the next `welcome`
     * (rejected with `session_lost` if that welcome starts a fresh session).
     */
    send(frame: ClientFrame): Promise<void>;
    /**
     * Ends the connection with close code 1000 (the gateway ends the session). Settles at
     * once when no socket is open (while reconnecting): there is no one to tell.
     */
    close(): Promise<void>;
}
