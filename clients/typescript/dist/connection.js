/**
 * One logical connection to the gateway across any number of sockets: the handshake
 * (`hello`/`welcome`, the key in `hello` or in a subprotocol), reconnection with
 * full-jitter backoff and resume (`last_seq`, `?session=`), the close-code rules, acks,
 * application-level pings, the queue of frames written while no socket is open, and the
 * in-order, one-per-task delivery of gateway frames to its owner.
 * @module
 */
import { MuxError } from "./errors.js";
import { backoffDelay, macrotaskScheduler } from "./timing.js";
import { BEARER_PREFIX, CLIENT_VERSION, SUBPROTOCOL, base64url, describeUrl, messageText, parseFrame, upgradeUrl, } from "./wire.js";
const OPEN = 1;
/** Frames written while no socket is open wait here, at most this many (`queue_full`). */
export const MAX_QUEUED_FRAMES = 1024;
/** A socket that has not delivered `welcome` this long after it was created is given up. */
const WELCOME_TIMEOUT_MS = 15_000;
/** Ping interval until the gateway's `welcome` says its own. */
const DEFAULT_HEARTBEAT_MS = 15_000;
/** How long `close()` waits for the gateway's close frame before dropping the socket. */
const CLOSE_WAIT_MS = 2_000;
export class Connection {
    #url;
    #sink;
    #WebSocket;
    #protocols;
    #token;
    #client;
    #reconnect;
    #minDelayMs;
    #maxDelayMs;
    #maxAttempts;
    #ackEvery;
    #schedule = macrotaskScheduler();
    #state = "connecting";
    #socket;
    #welcomed = false;
    #everWelcomed = false;
    #session;
    #lastSeq = 0;
    #unacked = 0;
    #attempt = 0;
    #endError;
    /** Frames written while no socket was open. */
    #outbox = [];
    /** Received frames (as tasks) not yet handed to the sink. */
    #inbox = [];
    #inboxHead = 0;
    #pumping = false;
    #retryTimer;
    #welcomeTimer;
    #heartbeatTimer;
    #heardSinceTick = false;
    #pinged = false;
    #opened;
    constructor(url, options, sink) {
        const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
        if (typeof WebSocketImpl !== "function") {
            throw new TypeError("mcpmux: no WebSocket implementation; pass one as options.WebSocket (on Node 20, the ws package's WebSocket)");
        }
        this.#url = url;
        this.#sink = sink;
        this.#WebSocket = WebSocketImpl;
        this.#protocols = [SUBPROTOCOL];
        if (options.token !== undefined && options.keyIn === "subprotocol") {
            this.#protocols.push(BEARER_PREFIX + base64url(options.token));
        }
        else {
            this.#token = options.token;
        }
        this.#client = options.client ?? { name: "mcpmux-js", version: CLIENT_VERSION };
        const reconnect = options.reconnect ?? true;
        this.#reconnect = reconnect !== false;
        const tuning = typeof reconnect === "object" ? reconnect : {};
        this.#minDelayMs = positive(tuning.minDelayMs, 250, "reconnect.minDelayMs");
        this.#maxDelayMs = positive(tuning.maxDelayMs, 10_000, "reconnect.maxDelayMs");
        this.#maxAttempts = positive(tuning.maxAttempts, Infinity, "reconnect.maxAttempts");
        this.#ackEvery = positive(options.ackEvery, 100, "ackEvery");
    }
    /** The current state. */
    get state() {
        return this.#state;
    }
    /** The client session's id, once a `welcome` named it. */
    get session() {
        return this.#session;
    }
    /** Opens the first socket; resolves with its `welcome`, rejects if it fails. */
    start() {
        return new Promise((resolve, reject) => {
            this.#opened = { resolve, reject };
            this.#sink.connection({ state: "connecting" });
            this.#openSocket();
        });
    }
    /**
     * Writes `frame` now if a session is open, else queues it for the next `welcome`
     * (rejected with `session_lost` if that welcome starts a fresh session).
     */
    send(frame) {
        if (this.#state === "closed")
            return Promise.reject(this.#closedError());
        if (this.#state === "open" && this.#write(frame))
            return Promise.resolve();
        if (this.#outbox.length >= MAX_QUEUED_FRAMES) {
            return Promise.reject(new MuxError("queue_full", `${MAX_QUEUED_FRAMES} frames are already waiting for the connection to come back`));
        }
        return new Promise((resolve, reject) => {
            this.#outbox.push({ frame, resolve, reject });
        });
    }
    /** Ends the connection with close code 1000 (the gateway ends the session). */
    close() {
        if (this.#state === "closed")
            return Promise.resolve();
        const socket = this.#socket;
        this.#end(new MuxError("closed", "the connection was closed by the client"), 1000, "");
        if (!socket)
            return Promise.resolve();
        return new Promise((resolve) => {
            const timer = setTimeout(() => {
                socket.terminate?.();
                resolve();
            }, CLOSE_WAIT_MS);
            socket.onclose = () => {
                clearTimeout(timer);
                resolve();
            };
            socket.onerror = () => { };
            socket.onmessage = null;
            try {
                socket.close(1000, "");
            }
            catch {
                clearTimeout(timer);
                resolve();
            }
        });
    }
    #openSocket() {
        let socket;
        try {
            socket = new this.#WebSocket(upgradeUrl(this.#url, this.#session), this.#protocols);
        }
        catch (error) {
            this.#socketEnded(undefined, 1006, error instanceof Error ? error.message : String(error));
            return;
        }
        this.#socket = socket;
        this.#welcomed = false;
        socket.onopen = () => {
            if (socket === this.#socket)
                this.#write(this.#hello());
        };
        socket.onmessage = (event) => {
            if (socket === this.#socket)
                this.#receive(event.data);
        };
        socket.onclose = (event) => this.#socketEnded(socket, event.code, event.reason);
        socket.onerror = () => {
            // A close event follows; it carries what can be known.
        };
        this.#welcomeTimer = setTimeout(() => this.#abandon(socket, "no welcome from the gateway in time"), WELCOME_TIMEOUT_MS);
    }
    #hello() {
        const hello = { type: "hello", client: this.#client };
        if (this.#token !== undefined)
            hello.token = this.#token;
        if (this.#session !== undefined) {
            hello.resume = { session: this.#session, last_seq: this.#lastSeq };
        }
        return hello;
    }
    /** Writes `frame` on the current socket if it is open; false when it is not. */
    #write(frame) {
        const socket = this.#socket;
        if (!socket || socket.readyState !== OPEN)
            return false;
        try {
            socket.send(JSON.stringify(frame));
        }
        catch {
            return false;
        }
        const shown = frame.type === "hello" && frame.token !== undefined ? { ...frame, token: "(hidden)" } : frame;
        this.#sink.wire("out", shown);
        return true;
    }
    #receive(data) {
        const text = messageText(data);
        const frame = text === undefined ? undefined : parseFrame(text);
        if (!frame)
            return;
        this.#heardSinceTick = true;
        this.#pinged = false;
        if (!this.#welcomed) {
            if (frame.type === "welcome")
                this.#welcome(frame);
            return;
        }
        if (typeof frame.seq === "number") {
            // Frames are numbered without gaps; one at or below the last is one we have.
            if (frame.seq <= this.#lastSeq)
                return;
            this.#lastSeq = frame.seq;
            if (++this.#unacked >= this.#ackEvery) {
                this.#unacked = 0;
                this.#write({ type: "ack", seq: frame.seq });
            }
        }
        this.#deliver(() => {
            this.#sink.wire("in", frame);
            if (frame.type !== "pong")
                this.#sink.frame(frame);
        });
    }
    #welcome(frame) {
        clearTimeout(this.#welcomeTimer);
        this.#welcomed = true;
        const first = !this.#everWelcomed;
        const resumed = !first && frame.resumed === true && frame.session === this.#session;
        if (!resumed) {
            this.#lastSeq = 0;
            this.#unacked = 0;
        }
        this.#everWelcomed = true;
        this.#session = typeof frame.session === "string" ? frame.session : undefined;
        this.#attempt = 0;
        this.#startHeartbeat(frame.heartbeat_ms);
        this.#deliver(() => {
            if (this.#state === "closed")
                return;
            this.#state = "open";
            this.#sink.wire("in", frame);
            this.#sink.welcome(frame, resumed, first);
            const queued = this.#outbox.splice(0);
            for (const entry of queued) {
                if (first || resumed) {
                    if (this.#write(entry.frame))
                        entry.resolve();
                    else
                        this.#outbox.push(entry);
                }
                else {
                    entry.reject(new MuxError("session_lost", "the gateway could not resume the session; initialize again"));
                }
            }
            this.#sink.connection(first ? { state: "open" } : { state: "open", resumed });
            if (first)
                this.#opened?.resolve();
        });
    }
    #startHeartbeat(intervalMs) {
        clearInterval(this.#heartbeatTimer);
        const ms = typeof intervalMs === "number" && intervalMs > 0 ? intervalMs : DEFAULT_HEARTBEAT_MS;
        this.#heardSinceTick = false;
        this.#pinged = false;
        const socket = this.#socket;
        this.#heartbeatTimer = setInterval(() => {
            if (this.#heardSinceTick) {
                this.#heardSinceTick = false;
            }
            else if (!this.#pinged) {
                this.#pinged = true;
                this.#write({ type: "ping" });
            }
            else if (socket) {
                this.#abandon(socket, "no frame and no pong from the gateway for two heartbeat intervals");
            }
        }, ms);
    }
    /** Gives up a socket that went silent: drops it (without a close frame where possible). */
    #abandon(socket, reason) {
        if (socket !== this.#socket)
            return;
        detach(socket);
        if (socket.terminate)
            socket.terminate();
        else {
            try {
                socket.close();
            }
            catch {
                // Already closing.
            }
        }
        this.#socketEnded(socket, 1006, reason);
    }
    #socketEnded(socket, code, reason) {
        if (socket !== this.#socket)
            return;
        if (socket)
            detach(socket);
        this.#socket = undefined;
        clearTimeout(this.#welcomeTimer);
        clearInterval(this.#heartbeatTimer);
        if (this.#state === "closed")
            return;
        if (!this.#everWelcomed) {
            const error = new MuxError("connect_failed", `could not open a session with ${describeUrl(this.#url)}: ${describeClose(code, reason)}`, { data: { code, reason } });
            this.#opened?.reject(error);
            this.#end(error, code, reason);
            return;
        }
        const fatal = code >= 4500 && code <= 4999;
        if (fatal || !this.#reconnect || this.#attempt >= this.#maxAttempts) {
            const why = fatal
                ? `the gateway closed the connection: ${describeClose(code, reason)}`
                : `the connection ended: ${describeClose(code, reason)}`;
            this.#end(new MuxError("closed", why, { data: { code, reason } }), code, reason);
            return;
        }
        const attempt = ++this.#attempt;
        this.#state = "reconnecting";
        this.#deliver(() => this.#sink.connection({ state: "reconnecting", code, reason, attempt }));
        this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined;
            if (this.#state !== "closed")
                this.#openSocket();
        }, backoffDelay(attempt - 1, this.#minDelayMs, this.#maxDelayMs));
    }
    /** Ends the connection for good: nothing is sent or retried after this. */
    #end(error, code, reason) {
        this.#state = "closed";
        this.#endError = error;
        clearTimeout(this.#retryTimer);
        clearTimeout(this.#welcomeTimer);
        clearInterval(this.#heartbeatTimer);
        const socket = this.#socket;
        this.#socket = undefined;
        if (socket)
            detach(socket);
        for (const entry of this.#outbox.splice(0))
            entry.reject(error);
        // After the frames that arrived before the end, so that their responses still settle.
        this.#deliver(() => {
            this.#sink.ended(error);
            this.#sink.connection({ state: "closed", code, reason });
        });
    }
    #closedError() {
        return this.#endError ?? new MuxError("closed", "the connection is closed");
    }
    /** Queues a task for the sink; tasks run in order, one per event-loop task. */
    #deliver(task) {
        this.#inbox.push(task);
        if (this.#pumping)
            return;
        this.#pumping = true;
        this.#schedule(this.#pump);
    }
    #pump = () => {
        const task = this.#inbox[this.#inboxHead];
        this.#inbox[this.#inboxHead++] = noop;
        if (this.#inboxHead === this.#inbox.length) {
            this.#inbox = [];
            this.#inboxHead = 0;
            this.#pumping = false;
        }
        else {
            this.#schedule(this.#pump);
        }
        task?.();
    };
}
function noop() { }
function detach(socket) {
    socket.onopen = null;
    socket.onmessage = null;
    socket.onclose = null;
    socket.onerror = () => { };
}
function positive(value, fallback, name) {
    if (value === undefined)
        return fallback;
    if (typeof value !== "number" || !(value > 0)) {
        throw new TypeError(`mcpmux: ${name} must be a positive number, got ${String(value)}`);
    }
    return value;
}
function describeClose(code, reason) {
    return reason ? `close code ${code} (${reason})` : `close code ${code}`;
}
