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
import { closeAction, macrotaskScheduler, reconnectDelay } from "./timing.js";
import { BEARER_PREFIX, CLIENT_VERSION, SUBPROTOCOL, base64url, describeUrl, messageText, parseFrame, upgradeUrl, } from "./wire.js";
const OPEN = 1;
/** Frames written while no socket is open wait here, at most this many (`queue_full`). */
export const MAX_QUEUED_FRAMES = 1024;
/** ... and at most this many bytes of them (`queue_full`). */
export const MAX_QUEUED_BYTES = 8 * 1024 * 1024;
/**
 * Frames written but not yet known to be read are kept for a resend, at most this many;
 * beyond it the oldest is given up (its request rejects with `resend_overflow`).
 */
export const MAX_UNCONFIRMED_FRAMES = 1024;
/** ... and at most this many bytes of them. */
export const MAX_UNCONFIRMED_BYTES = 8 * 1024 * 1024;
/**
 * When this many frames (or bytes) are unconfirmed, a `ping` asks the gateway to confirm
 * them: its `pong` says that every frame before the `ping` was read.
 */
const CONFIRM_AFTER_FRAMES = 32;
const CONFIRM_AFTER_BYTES = 256 * 1024;
/**
 * Gateway frames waiting for their task: beyond this many (or bytes), a socket that can
 * pause reading (Node's `ws`) is paused until half of them are delivered...
 */
export const INBOX_PAUSE_FRAMES = 1000;
export const INBOX_PAUSE_BYTES = 8 * 1024 * 1024;
/**
 * ... and one that cannot (browsers) is closed at this many (or bytes), ending the
 * connection with `inbox_full`: the application does not keep up with the gateway.
 */
export const INBOX_MAX_FRAMES = 10_000;
export const INBOX_MAX_BYTES = 64 * 1024 * 1024;
/** A socket that has not delivered `welcome` this long after it was created is given up. */
const WELCOME_TIMEOUT_MS = 15_000;
/** Ping interval until the gateway's `welcome` says its own. */
const DEFAULT_HEARTBEAT_MS = 15_000;
/** How long `close()` waits for the gateway's close frame before dropping the socket. */
const CLOSE_WAIT_MS = 2_000;
/** A socket that stayed up this long after its `welcome` starts the attempt count again. */
const STABLE_MS = 15_000;
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
    #maxFailures;
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
    /** Attempts in a row that ended before a `welcome`. */
    #failures = 0;
    /** When the current socket got its `welcome`. */
    #welcomedAt = 0;
    /** The HTTP status that refused the current socket's upgrade, where the WebSocket says. */
    #refusedStatus;
    #endError;
    /** Frames written while no socket was open. */
    #outbox = [];
    #outboxBytes = 0;
    /** Frames written after `hello` in this client session (the gateway's `received`). */
    #written = 0;
    /** Frames written but not known to be read, oldest first. */
    #unconfirmed = [];
    #unconfirmedBytes = 0;
    /** The number of the `ping` whose `pong` is awaited; its pong confirms every frame up to it. */
    #probe;
    /** Received frames (as tasks, with their size) not yet handed to the sink. */
    #inbox = [];
    #inboxHead = 0;
    #inboxBytes = 0;
    #pumping = false;
    /** The socket paused because the inbox is full, until it drains. */
    #paused;
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
        this.#maxFailures = positive(tuning.maxFailures, 10, "reconnect.maxFailures");
        this.#ackEvery = positive(options.ackEvery, 100, "ackEvery");
    }
    /** The current state. */
    get state() {
        return this.#state;
    }
    /** Whether frames are written now (a socket has its `welcome`); else they are queued. */
    get isOpen() {
        return this.#welcomed && this.#socket?.readyState === OPEN;
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
        const text = JSON.stringify(frame);
        if (this.#transmit(frame, text))
            return Promise.resolve();
        if (this.#outbox.length >= MAX_QUEUED_FRAMES || this.#outboxBytes + text.length > MAX_QUEUED_BYTES) {
            return Promise.reject(new MuxError("queue_full", `${this.#outbox.length} frames (${this.#outboxBytes} bytes) are already waiting for the connection to come back`));
        }
        return new Promise((resolve, reject) => {
            this.#outbox.push({ frame, text, resolve, reject });
            this.#outboxBytes += text.length;
        });
    }
    /**
     * Ends the connection with close code 1000 (the gateway ends the session). Settles at
     * once when no socket is open (while reconnecting): there is no one to tell.
     */
    close() {
        if (this.#state === "closed")
            return Promise.resolve();
        const socket = this.#socket;
        this.#end(new MuxError("closed", "the connection was closed by the client"), 1000, "");
        if (!socket)
            return Promise.resolve();
        if (socket.readyState !== OPEN) {
            detach(socket);
            socket.terminate?.();
            try {
                socket.close();
            }
            catch {
                // Already closing.
            }
            return Promise.resolve();
        }
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
        this.#refusedStatus = undefined;
        socket.onopen = () => {
            if (socket === this.#socket)
                this.#writeHello(socket);
        };
        socket.onmessage = (event) => {
            if (socket === this.#socket)
                this.#receive(event.data);
        };
        socket.onclose = (event) => this.#socketEnded(socket, event.code, event.reason);
        socket.onerror = (event) => {
            // A close event follows. Node's ws says why an upgrade was refused; browsers do not.
            const status = /Unexpected server response: (\d{3})/.exec(String(event?.message));
            if (status && socket === this.#socket)
                this.#refusedStatus = Number(status[1]);
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
    /** Writes `hello`, which the gateway does not count among the session's frames. */
    #writeHello(socket) {
        const hello = this.#hello();
        try {
            socket.send(JSON.stringify(hello));
        }
        catch {
            return; // the close event follows
        }
        this.#sink.wire("out", hello.type === "hello" && hello.token !== undefined ? { ...hello, token: "(hidden)" } : hello);
    }
    /**
     * Writes `frame` on the current socket once it has its `welcome`; false when there is
     * none. The frame is numbered and kept until the gateway is known to have read it.
     */
    #transmit(frame, text = JSON.stringify(frame)) {
        const socket = this.#socket;
        if (!this.#welcomed || !socket || socket.readyState !== OPEN)
            return false;
        try {
            socket.send(text);
        }
        catch {
            return false;
        }
        this.#written++;
        this.#keep({ n: this.#written, frame, text });
        this.#sink.wire("out", frame);
        if (frame.type === "ping") {
            this.#probe = this.#written;
        }
        else if (this.#probe === undefined &&
            (this.#unconfirmed.length >= CONFIRM_AFTER_FRAMES || this.#unconfirmedBytes >= CONFIRM_AFTER_BYTES)) {
            this.#transmit({ type: "ping" });
        }
        return true;
    }
    /** Keeps a written frame for a resend, giving up the oldest beyond the bounds. */
    #keep(entry) {
        this.#unconfirmed.push(entry);
        this.#unconfirmedBytes += entry.text.length;
        while (this.#unconfirmed.length > 1 &&
            (this.#unconfirmed.length > MAX_UNCONFIRMED_FRAMES || this.#unconfirmedBytes > MAX_UNCONFIRMED_BYTES)) {
            const oldest = this.#unconfirmed.shift();
            this.#unconfirmedBytes -= oldest.text.length;
            const error = new MuxError("resend_overflow", `the gateway has not confirmed the last ${this.#unconfirmed.length} frames written, ` +
                `more than can be kept for a resend (${MAX_UNCONFIRMED_FRAMES} frames, ${MAX_UNCONFIRMED_BYTES} bytes): ` +
                `the oldest is given up`);
            this.#sink.unconfirmed(oldest.frame, error);
        }
    }
    /** The gateway has read every frame up to number `n`. */
    #confirm(n) {
        let drop = 0;
        while (drop < this.#unconfirmed.length && this.#unconfirmed[drop].n <= n) {
            this.#unconfirmedBytes -= this.#unconfirmed[drop].text.length;
            drop++;
        }
        this.#unconfirmed.splice(0, drop);
    }
    /**
     * After a resumed `welcome`: the gateway read `received` frames of the session; the
     * frames after them never arrived and are written again, in order, numbered on from
     * `received`, before anything new. Pings and acks are not repeated: a new `ping` is
     * sent when one is due, and the next `ack` says more than an old one.
     */
    #resend(received) {
        this.#confirm(received);
        const again = this.#unconfirmed;
        this.#unconfirmed = [];
        this.#unconfirmedBytes = 0;
        this.#probe = undefined;
        this.#written = Math.max(received, 0);
        for (const [index, entry] of again.entries()) {
            if (entry.frame.type === "ping" || entry.frame.type === "ack")
                continue;
            if (!this.#transmit(entry.frame, entry.text)) {
                // This socket is gone already: the next resume sends them.
                for (const rest of again.slice(index)) {
                    if (rest.frame.type !== "ping" && rest.frame.type !== "ack") {
                        this.#keep({ ...rest, n: Number.MAX_SAFE_INTEGER });
                    }
                }
                return;
            }
        }
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
        if (frame.type === "pong" && this.#probe !== undefined) {
            // The gateway answers a ping once it has read it, and reads frames in order.
            this.#confirm(this.#probe);
            this.#probe = undefined;
        }
        if (typeof frame.seq === "number") {
            // Frames are numbered without gaps; one at or below the last is one we have.
            if (frame.seq <= this.#lastSeq)
                return;
            this.#lastSeq = frame.seq;
            if (++this.#unacked >= this.#ackEvery) {
                this.#unacked = 0;
                this.#transmit({ type: "ack", seq: frame.seq });
            }
        }
        this.#deliver(() => {
            this.#sink.wire("in", frame);
            if (frame.type !== "pong")
                this.#sink.frame(frame);
        }, text.length);
        this.#bound();
    }
    /** Keeps the inbox bounded: pauses the socket, or ends the connection if it cannot. */
    #bound() {
        const socket = this.#socket;
        const waiting = this.#inbox.length - this.#inboxHead;
        if (!socket || this.#paused === socket)
            return;
        if (waiting < INBOX_PAUSE_FRAMES && this.#inboxBytes < INBOX_PAUSE_BYTES)
            return;
        if (typeof socket.pause === "function" && typeof socket.resume === "function") {
            socket.pause();
            this.#paused = socket;
            return;
        }
        if (waiting < INBOX_MAX_FRAMES && this.#inboxBytes < INBOX_MAX_BYTES)
            return;
        const reason = "the client does not keep up";
        const error = new MuxError("inbox_full", `${waiting} frames (${this.#inboxBytes} bytes) from the gateway wait for the application, ` +
            `more than ${INBOX_MAX_FRAMES} (${INBOX_MAX_BYTES} bytes): the connection is closed`, { data: { code: 1000, reason } });
        this.#end(error, 1000, reason);
        try {
            socket.close(1000, reason);
        }
        catch {
            // Already closing.
        }
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
        this.#failures = 0;
        this.#welcomedAt = Date.now();
        this.#startHeartbeat(frame.heartbeat_ms);
        // What was written before goes first, now, so that nothing written later overtakes it.
        if (resumed) {
            // A gateway that does not say what it read gets nothing again.
            this.#resend(typeof frame.received === "number" ? frame.received : this.#written);
        }
        else {
            this.#written = 0;
            this.#unconfirmed = [];
            this.#unconfirmedBytes = 0;
            this.#probe = undefined;
        }
        const queued = this.#outbox.splice(0);
        this.#outboxBytes = 0;
        for (const [index, entry] of queued.entries()) {
            if (first || resumed) {
                if (this.#transmit(entry.frame, entry.text)) {
                    entry.resolve();
                    continue;
                }
                // This socket is gone already: the rest waits for the next one.
                for (const rest of queued.slice(index)) {
                    this.#outbox.push(rest);
                    this.#outboxBytes += rest.text.length;
                }
                break;
            }
            entry.reject(new MuxError("session_lost", "the gateway could not resume the session; initialize again"));
        }
        this.#deliver(() => {
            if (this.#state === "closed")
                return;
            this.#state = "open";
            this.#sink.wire("in", frame);
            this.#sink.welcome(frame, resumed, first);
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
                // A ping already awaiting its pong serves.
                if (this.#probe === undefined)
                    this.#transmit({ type: "ping" });
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
            const status = this.#refusedStatus;
            const error = new MuxError("connect_failed", `could not open a session with ${describeUrl(this.#url)}: ${status ? `HTTP ${status}, ` : ""}${describeClose(code, reason)}`, { data: status ? { code, reason, status } : { code, reason } });
            this.#opened?.reject(error);
            this.#end(error, code, reason);
            return;
        }
        const welcomed = this.#welcomed;
        this.#welcomed = false;
        if (welcomed && Date.now() - this.#welcomedAt >= STABLE_MS)
            this.#attempt = 0;
        if (!welcomed)
            this.#failures++;
        const refusal = this.#refusal(code, reason);
        if (refusal) {
            this.#end(refusal, code, reason);
            return;
        }
        const action = closeAction(code);
        if (!this.#reconnect || this.#attempt >= this.#maxAttempts) {
            const why = `the connection ended: ${describeClose(code, reason)}`;
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
        }, reconnectDelay(action, attempt - 1, this.#minDelayMs, this.#maxDelayMs));
    }
    /** The error that ends the connection after a socket closed with `code`, if it must end. */
    #refusal(code, reason) {
        const data = { code, reason };
        const action = closeAction(code);
        if (action === "moved") {
            return new MuxError("session_moved", `another connection resumed this session, which now lives there (${describeClose(code, reason)}); this one does not reconnect`, { data });
        }
        if (action === "fatal") {
            return new MuxError("closed", `the gateway closed the connection: ${describeClose(code, reason)}`, { data });
        }
        const status = this.#refusedStatus;
        if (status === 401 || status === 403) {
            return new MuxError("refused", `the gateway refused the upgrade with HTTP ${status}${status === 401 ? " (a wrong or missing API key)" : " (an origin or host it does not allow)"}`, { data: { ...data, status } });
        }
        if (this.#failures >= this.#maxFailures) {
            return new MuxError("reconnect_failed", `${this.#failures} attempts in a row ended before the gateway said welcome (the last: ${describeClose(code, reason)}): ` +
                "it is unreachable, or it refuses the upgrade (HTTP 401 or 403 show as 1006 in a browser)", { data });
        }
        return undefined;
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
        this.#outboxBytes = 0;
        this.#unconfirmed = [];
        this.#unconfirmedBytes = 0;
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
    #deliver(task, bytes = 0) {
        this.#inbox.push({ task, bytes });
        this.#inboxBytes += bytes;
        if (this.#pumping)
            return;
        this.#pumping = true;
        this.#schedule(this.#pump);
    }
    #pump = () => {
        const entry = this.#inbox[this.#inboxHead];
        this.#inbox[this.#inboxHead++] = DONE;
        this.#inboxBytes -= entry?.bytes ?? 0;
        if (this.#inboxHead === this.#inbox.length) {
            this.#inbox = [];
            this.#inboxHead = 0;
            this.#pumping = false;
        }
        else {
            this.#schedule(this.#pump);
        }
        const paused = this.#paused;
        if (paused &&
            this.#inbox.length - this.#inboxHead <= INBOX_PAUSE_FRAMES / 2 &&
            this.#inboxBytes <= INBOX_PAUSE_BYTES / 2) {
            this.#paused = undefined;
            if (paused === this.#socket)
                paused.resume?.();
        }
        entry?.task();
    };
}
const DONE = { task() { }, bytes: 0 };
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
