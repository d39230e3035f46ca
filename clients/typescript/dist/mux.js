/**
 * The multiplexer a program holds: it routes the gateway's frames to the callers and
 * listeners of each server (responses to pending requests, progress to `onprogress`,
 * notifications to listeners, server-to-client requests to handlers or an SDK
 * transport), tracks server states and upstream sessions, and settles every pending
 * request exactly once: by its response, its timeout, its abort signal, a refused
 * resume (`session_lost`) or the end of the connection.
 * @module
 */
import { Connection } from "./connection.js";
import { MuxError } from "./errors.js";
import { Emitter, callSafely } from "./events.js";
import { ServerHandle } from "./server.js";
import { MuxTransport } from "./transport.js";
import { CLIENT_VERSION } from "./wire.js";
/** Prefix of this library's request ids, so its responses are never handed elsewhere. */
const ID_PREFIX = "mcpmux-";
/**
 * One connection to an mcpmux gateway, shared by every server it carries.
 * Made by {@link connect}.
 */
export class Mux {
    #connection;
    #events = new Emitter();
    #servers = new Map();
    #clientInfo;
    /** Servers this session has an upstream session with, or sent a message that opens one. */
    #upstreams = new Set();
    #pending = new Map();
    #handles = new Map();
    #listeners = new Map();
    #handlers = new Map();
    #transports = new Map();
    #closeWaiters = new Map();
    #nextId = 0;
    #ended;
    /** Made by {@link connect}, which also opens it. */
    constructor(url, options = {}) {
        const client = options.client;
        this.#clientInfo = { name: client?.name ?? "mcpmux-js", version: client?.version ?? CLIENT_VERSION };
        this.#connection = new Connection(url, options, {
            welcome: (frame, resumed, first) => this.#welcome(frame, resumed, first),
            frame: (frame) => this.#frame(frame),
            wire: (direction, frame) => {
                if (this.#events.has("frame"))
                    this.#events.emit("frame", { direction, frame });
            },
            connection: (event) => {
                // A close sent on a socket that dropped settles now; the frame goes again after a
                // resume if the gateway did not read it, and a lost session needs no close.
                if (event.state === "reconnecting")
                    this.#settleCloseWaiters();
                this.#events.emit("connection", event);
            },
            ended: (error) => this.#end(error),
            unconfirmed: (frame, error) => this.#unconfirmed(frame, error),
        });
    }
    /** @internal Opens the first socket; resolves once the gateway said `welcome`. */
    _start() {
        return this.#connection.start();
    }
    /** The current client session's id (it changes when a resume is refused). */
    get session() {
        return this.#connection.session;
    }
    /** Every server the gateway offers, by name, with its live state. */
    get servers() {
        return this.#servers;
    }
    /** The handle for the server `name` (the same object for the same name). */
    server(name) {
        let handle = this.#handles.get(name);
        if (!handle) {
            handle = new ServerHandle(this, name);
            this.#handles.set(name, handle);
        }
        return handle;
    }
    /**
     * An MCP SDK `Transport` to the server `name` over this connection:
     * `await new Client(info).connect(mux.transport("everything"))`. One started
     * transport per server at a time.
     */
    transport(name) {
        return new MuxTransport(this, name);
    }
    /** Adds a listener; the returned function removes it. */
    on(event, fn) {
        return this.#events.on(event, fn);
    }
    /**
     * Closes the socket with 1000: the gateway ends the session and its upstream
     * sessions. Pending requests reject with `closed`.
     */
    close() {
        this.#end(new MuxError("closed", "the connection was closed by the client"), { requested: true });
        return this.#connection.close();
    }
    /** @internal The `clientInfo` that `initialize` sends by default. */
    get _clientInfo() {
        return this.#clientInfo;
    }
    /** @internal See {@link ServerHandle.request}. */
    _request(server, method, params, options = {}) {
        if (this.#ended)
            return Promise.reject(this.#ended);
        const { signal, timeout, onprogress } = options;
        if (signal?.aborted)
            return Promise.reject(abortError(signal));
        if (timeout !== undefined && !(typeof timeout === "number" && timeout > 0)) {
            return Promise.reject(new TypeError(`mcpmux: timeout must be a positive number of ms, got ${String(timeout)}`));
        }
        const id = `${ID_PREFIX}${++this.#nextId}`;
        let sent = params;
        if (onprogress) {
            const meta = (sent?._meta ?? {});
            sent = { ...sent, _meta: { ...meta, progressToken: id } };
        }
        const message = { jsonrpc: "2.0", id, method };
        if (sent !== undefined)
            message.params = sent;
        return new Promise((resolve, reject) => {
            const entry = { id, server, method, resolve: resolve, reject };
            if (onprogress)
                entry.onprogress = onprogress;
            this.#pending.set(id, entry);
            if (timeout !== undefined && Number.isFinite(timeout)) {
                entry.timer = setTimeout(() => {
                    const error = new MuxError("timeout", `no response to ${method} from ${server} within ${timeout} ms`);
                    this.#giveUp(entry, error, "timeout");
                }, timeout);
            }
            if (signal) {
                entry.signal = signal;
                entry.onAbort = () => this.#giveUp(entry, abortError(signal), "aborted");
                signal.addEventListener("abort", entry.onAbort, { once: true });
            }
            this._send(server, message).catch((error) => this.#settle(entry, error));
        });
    }
    /** @internal Carries one JSON-RPC message to `server`; resolves once it is written. */
    _send(server, message) {
        if (this.#ended)
            return Promise.reject(this.#ended);
        // The gateway opens an upstream session at a server's first message.
        if (this.#servers.has(server))
            this.#upstreams.add(server);
        return this.#connection.send({ type: "rpc", server, message });
    }
    /** @internal See {@link ServerHandle.onNotification}. */
    _onNotification(server, method, fn) {
        let byMethod = this.#listeners.get(server);
        if (!byMethod) {
            byMethod = new Map();
            this.#listeners.set(server, byMethod);
        }
        let set = byMethod.get(method);
        if (!set) {
            set = new Set();
            byMethod.set(method, set);
        }
        set.add(fn);
        return () => {
            set.delete(fn);
        };
    }
    /** @internal See {@link ServerHandle.onRequest}. */
    _onRequest(server, method, handler) {
        let byMethod = this.#handlers.get(server);
        if (!byMethod) {
            byMethod = new Map();
            this.#handlers.set(server, byMethod);
        }
        byMethod.set(method, handler);
        return () => {
            if (byMethod.get(method) === handler)
                byMethod.delete(method);
        };
    }
    /**
     * @internal Sends `close` for `server`; resolves when the gateway says it is closed,
     * or at once while no socket is open (the frame is sent after the resume).
     */
    _close(server) {
        if (this.#ended)
            return Promise.resolve();
        const open = this.#connection.isOpen;
        return new Promise((resolve) => {
            let waiters = this.#closeWaiters.get(server);
            if (!waiters) {
                waiters = [];
                this.#closeWaiters.set(server, waiters);
            }
            const waiter = { resolve, transport: this.#transports.get(server) };
            waiters.push(waiter);
            this.#connection.send({ type: "close", server }).catch(() => {
                // Not sent: the session it would close is gone with the connection or the resume.
                const list = this.#closeWaiters.get(server);
                const at = list?.indexOf(waiter) ?? -1;
                if (list && at >= 0)
                    list.splice(at, 1);
                resolve();
            });
            if (!open)
                resolve();
        });
    }
    /** @internal Makes `transport` the one that receives `server`'s unclaimed messages. */
    _attach(server, transport) {
        if (this.#ended)
            throw this.#ended;
        if (this.#transports.has(server)) {
            throw new MuxError("transport_busy", `a transport for ${server} is already started on this connection; close it first`);
        }
        this.#transports.set(server, transport);
    }
    /** @internal */
    _detach(server, transport) {
        if (this.#transports.get(server) === transport)
            this.#transports.delete(server);
    }
    #welcome(frame, resumed, first) {
        const before = new Map(this.#servers);
        this.#servers.clear();
        for (const entry of Array.isArray(frame.servers) ? frame.servers : []) {
            if (typeof entry?.name === "string")
                this.#servers.set(entry.name, String(entry.state));
        }
        if (first)
            return;
        for (const [server, state] of this.#servers) {
            if (before.get(server) !== state)
                this.#events.emit("status", { server, state });
        }
        if (!resumed) {
            this.#sessionLost("the gateway could not resume the session after the connection dropped");
        }
    }
    #frame(frame) {
        const server = typeof frame.server === "string" ? frame.server : undefined;
        switch (frame.type) {
            case "rpc":
                if (server !== undefined && isObject(frame.message)) {
                    this.#rpc(server, frame.message);
                }
                return;
            case "status":
                if (server !== undefined && typeof frame.state === "string") {
                    this.#servers.set(server, frame.state);
                    this.#events.emit("status", { server, state: frame.state });
                }
                return;
            case "session":
                if (server !== undefined)
                    this.#session(server, frame);
                return;
            case "error": {
                const event = {
                    code: String(frame.code),
                    message: typeof frame.message === "string" ? frame.message : "",
                };
                if (server !== undefined)
                    event.server = server;
                if ("ref" in frame)
                    event.ref = frame.ref;
                this.#events.emit("error", event);
                return;
            }
        }
    }
    #session(server, frame) {
        const state = frame.state;
        if (state !== "open" && state !== "lost" && state !== "closed")
            return;
        const event = { server, state };
        if (typeof frame.reason === "string")
            event.reason = frame.reason;
        if (state === "open") {
            this.#upstreams.add(server);
        }
        else {
            this.#upstreams.delete(server);
        }
        if (state === "closed") {
            const waiter = this.#closeWaiters.get(server)?.shift();
            if (waiter?.transport)
                this.#failTransport(server, waiter.transport, "closed", "the upstream session was closed");
            waiter?.resolve();
        }
        if (state === "lost") {
            const transport = this.#transports.get(server);
            const why = `the upstream session with ${server} was lost${event.reason ? ` (${event.reason})` : ""}`;
            if (transport)
                this.#failTransport(server, transport, "session_lost", why);
        }
        this.#events.emit("session", event);
    }
    #rpc(server, message) {
        const { id, method } = message;
        if (typeof method === "string") {
            if (id === undefined || id === null)
                this.#notification(server, method, message);
            else
                this.#serverRequest(server, method, message);
            return;
        }
        if (typeof id === "string" && id.startsWith(ID_PREFIX)) {
            // Ours: settle it, or drop it if the request was given up on.
            const entry = this.#pending.get(id);
            if (entry && entry.server === server) {
                if (message.error !== undefined)
                    this.#settle(entry, MuxError.fromRpc(message.error));
                else
                    this.#settle(entry, undefined, message.result);
            }
            return;
        }
        this.#transports.get(server)?._deliver(message);
    }
    #notification(server, method, message) {
        const params = message.params;
        let claimed = false;
        if (method === "notifications/progress" && isObject(params)) {
            const entry = this.#pending.get(String(params.progressToken));
            if (entry?.onprogress && entry.server === server && params.progressToken === entry.id) {
                claimed = true;
                const progress = { progress: Number(params.progress) };
                if (typeof params.total === "number")
                    progress.total = params.total;
                if (typeof params.message === "string")
                    progress.message = params.message;
                callSafely(entry.onprogress, progress);
            }
        }
        const byMethod = this.#listeners.get(server);
        for (const key of [method, "*"]) {
            for (const fn of [...(byMethod?.get(key) ?? [])]) {
                callSafely(() => fn(params, message), undefined);
            }
        }
        if (!claimed)
            this.#transports.get(server)?._deliver(message);
    }
    #serverRequest(server, method, message) {
        const id = message.id;
        const handler = this.#handlers.get(server)?.get(method);
        if (!handler) {
            const transport = this.#transports.get(server);
            if (transport) {
                transport._deliver(message);
            }
            else {
                this.#respond(server, { jsonrpc: "2.0", id, error: { code: -32601, message: `Method not found: ${method}` } });
            }
            return;
        }
        Promise.resolve()
            .then(() => handler(message.params, message))
            .then((result) => this.#respond(server, { jsonrpc: "2.0", id, result: result ?? {} }), (error) => {
            const code = error instanceof MuxError && error.rpcCode !== undefined ? error.rpcCode : -32603;
            const text = error instanceof Error ? error.message : String(error);
            this.#respond(server, { jsonrpc: "2.0", id, error: { code, message: text } });
        });
    }
    #respond(server, message) {
        this._send(server, message).catch(() => {
            // The connection or the session ended: there is no one left to answer.
        });
    }
    /** Settles `entry` once; false when it was already settled. */
    #settle(entry, error, result) {
        if (!this.#pending.delete(entry.id))
            return false;
        clearTimeout(entry.timer);
        if (entry.signal && entry.onAbort)
            entry.signal.removeEventListener("abort", entry.onAbort);
        if (error)
            entry.reject(error);
        else
            entry.resolve(result);
        return true;
    }
    /** Rejects `entry` and tells the server with `notifications/cancelled`. */
    #giveUp(entry, error, reason) {
        if (!this.#settle(entry, error))
            return;
        const cancel = {
            jsonrpc: "2.0",
            method: "notifications/cancelled",
            params: { requestId: entry.id, reason },
        };
        this._send(entry.server, cancel).catch(() => {
            // Nothing to cancel any more: the session is gone.
        });
    }
    /**
     * A frame given up before the gateway confirmed it: a request in it that still waits
     * for its response fails now, since after a drop it might never arrive.
     */
    #unconfirmed(frame, error) {
        if (frame.type !== "rpc")
            return;
        const { id, method } = frame.message;
        if (typeof method !== "string" || id === undefined || id === null)
            return;
        const entry = typeof id === "string" ? this.#pending.get(id) : undefined;
        if (entry && entry.server === frame.server) {
            this.#giveUp(entry, error, "resend_overflow");
            return;
        }
        this.#transports.get(frame.server)?._giveUp(id, error);
    }
    #failTransport(server, transport, code, message) {
        this._detach(server, transport);
        transport._fail(new MuxError(code, message));
    }
    /** The session was replaced by a fresh one: everything tied to the old one ends. */
    #sessionLost(reason) {
        const error = new MuxError("session_lost", `${reason}; initialize again`);
        for (const entry of [...this.#pending.values()])
            this.#settle(entry, error);
        for (const server of [...this.#upstreams]) {
            this.#events.emit("session", { server, state: "lost", reason });
        }
        this.#upstreams.clear();
        for (const [server, transport] of [...this.#transports]) {
            this.#failTransport(server, transport, "session_lost", `${reason}; connect the client again`);
        }
        this.#resolveCloseWaiters();
    }
    /**
     * The connection ended for good (closed by the caller, refused or given up). SDK
     * transports close; they report an error only when the caller did not ask for it.
     */
    #end(error, { requested = false } = {}) {
        if (this.#ended)
            return;
        this.#ended = error;
        for (const entry of [...this.#pending.values()])
            this.#settle(entry, error);
        for (const [server, transport] of [...this.#transports]) {
            if (requested) {
                this._detach(server, transport);
                transport._ended();
            }
            else {
                this.#failTransport(server, transport, error.code, error.message);
            }
        }
        this.#resolveCloseWaiters();
    }
    /** Settles every close waiting for its answer, keeping each in line for that answer. */
    #settleCloseWaiters() {
        for (const waiters of this.#closeWaiters.values())
            for (const waiter of waiters)
                waiter.resolve();
    }
    #resolveCloseWaiters() {
        const all = [...this.#closeWaiters.values()].flat();
        this.#closeWaiters.clear();
        for (const waiter of all)
            waiter.resolve();
    }
}
function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
}
function abortError(signal) {
    return new MuxError("aborted", "the request was aborted", { cause: signal.reason });
}
