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
import {
  BEARER_PREFIX,
  CLIENT_VERSION,
  SUBPROTOCOL,
  base64url,
  describeUrl,
  messageText,
  parseFrame,
  upgradeUrl,
  type ClientFrame,
  type GatewayFrame,
} from "./wire.js";

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
  client?: { name: string; version?: string };
  /** A WebSocket constructor (e.g. `ws`'s on Node 20); default `globalThis.WebSocket`. */
  WebSocket?: any;
  /**
   * Reconnect after a drop and resume the session (default true). Delays are full-jitter
   * exponential backoff: random in [0, min(maxDelayMs, minDelayMs * 2^attempt)).
   * Defaults: minDelayMs 250, maxDelayMs 10000, maxAttempts Infinity (per outage).
   */
  reconnect?: boolean | { minDelayMs?: number; maxDelayMs?: number; maxAttempts?: number };
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
}

/** The part of a WebSocket this library uses (browsers' and `ws`'s both fit). */
interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the TCP connection without a close frame. */
  terminate?(): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

const OPEN = 1;
/** Frames written while no socket is open wait here, at most this many (`queue_full`). */
export const MAX_QUEUED_FRAMES = 1024;
/** A socket that has not delivered `welcome` this long after it was created is given up. */
const WELCOME_TIMEOUT_MS = 15_000;
/** Ping interval until the gateway's `welcome` says its own. */
const DEFAULT_HEARTBEAT_MS = 15_000;
/** How long `close()` waits for the gateway's close frame before dropping the socket. */
const CLOSE_WAIT_MS = 2_000;

interface Queued {
  frame: ClientFrame;
  resolve(): void;
  reject(error: MuxError): void;
}

export class Connection {
  readonly #url: string;
  readonly #sink: ConnectionSink;
  readonly #WebSocket: new (url: string, protocols: string[]) => SocketLike;
  readonly #protocols: string[];
  readonly #token: string | undefined;
  readonly #client: { name: string; version?: string };
  readonly #reconnect: boolean;
  readonly #minDelayMs: number;
  readonly #maxDelayMs: number;
  readonly #maxAttempts: number;
  readonly #ackEvery: number;
  readonly #schedule = macrotaskScheduler();

  #state: ConnectionEvent["state"] = "connecting";
  #socket: SocketLike | undefined;
  #welcomed = false;
  #everWelcomed = false;
  #session: string | undefined;
  #lastSeq = 0;
  #unacked = 0;
  #attempt = 0;
  #endError: MuxError | undefined;

  /** Frames written while no socket was open. */
  #outbox: Queued[] = [];
  /** Received frames (as tasks) not yet handed to the sink. */
  #inbox: Array<() => void> = [];
  #inboxHead = 0;
  #pumping = false;

  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #welcomeTimer: ReturnType<typeof setTimeout> | undefined;
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #heardSinceTick = false;
  #pinged = false;
  #opened: { resolve(): void; reject(error: MuxError): void } | undefined;

  constructor(url: string, options: ConnectOptions, sink: ConnectionSink) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket;
    if (typeof WebSocketImpl !== "function") {
      throw new TypeError(
        "mcpmux: no WebSocket implementation; pass one as options.WebSocket (on Node 20, the ws package's WebSocket)",
      );
    }
    this.#url = url;
    this.#sink = sink;
    this.#WebSocket = WebSocketImpl as new (url: string, protocols: string[]) => SocketLike;
    this.#protocols = [SUBPROTOCOL];
    if (options.token !== undefined && options.keyIn === "subprotocol") {
      this.#protocols.push(BEARER_PREFIX + base64url(options.token));
    } else {
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
  get state(): ConnectionEvent["state"] {
    return this.#state;
  }

  /** The client session's id, once a `welcome` named it. */
  get session(): string | undefined {
    return this.#session;
  }

  /** Opens the first socket; resolves with its `welcome`, rejects if it fails. */
  start(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#opened = { resolve, reject };
      this.#sink.connection({ state: "connecting" });
      this.#openSocket();
    });
  }

  /**
   * Writes `frame` now if a session is open, else queues it for the next `welcome`
   * (rejected with `session_lost` if that welcome starts a fresh session).
   */
  send(frame: ClientFrame): Promise<void> {
    if (this.#state === "closed") return Promise.reject(this.#closedError());
    if (this.#state === "open" && this.#write(frame)) return Promise.resolve();
    if (this.#outbox.length >= MAX_QUEUED_FRAMES) {
      return Promise.reject(
        new MuxError(
          "queue_full",
          `${MAX_QUEUED_FRAMES} frames are already waiting for the connection to come back`,
        ),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.#outbox.push({ frame, resolve, reject });
    });
  }

  /** Ends the connection with close code 1000 (the gateway ends the session). */
  close(): Promise<void> {
    if (this.#state === "closed") return Promise.resolve();
    const socket = this.#socket;
    this.#end(new MuxError("closed", "the connection was closed by the client"), 1000, "");
    if (!socket) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        socket.terminate?.();
        resolve();
      }, CLOSE_WAIT_MS);
      socket.onclose = () => {
        clearTimeout(timer);
        resolve();
      };
      socket.onerror = () => {};
      socket.onmessage = null;
      try {
        socket.close(1000, "");
      } catch {
        clearTimeout(timer);
        resolve();
      }
    });
  }

  #openSocket(): void {
    let socket: SocketLike;
    try {
      socket = new this.#WebSocket(upgradeUrl(this.#url, this.#session), this.#protocols);
    } catch (error) {
      this.#socketEnded(undefined, 1006, error instanceof Error ? error.message : String(error));
      return;
    }
    this.#socket = socket;
    this.#welcomed = false;
    socket.onopen = () => {
      if (socket === this.#socket) this.#write(this.#hello());
    };
    socket.onmessage = (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    };
    socket.onclose = (event) => this.#socketEnded(socket, event.code, event.reason);
    socket.onerror = () => {
      // A close event follows; it carries what can be known.
    };
    this.#welcomeTimer = setTimeout(
      () => this.#abandon(socket, "no welcome from the gateway in time"),
      WELCOME_TIMEOUT_MS,
    );
  }

  #hello(): ClientFrame {
    const hello: ClientFrame = { type: "hello", client: this.#client };
    if (this.#token !== undefined) hello.token = this.#token;
    if (this.#session !== undefined) {
      hello.resume = { session: this.#session, last_seq: this.#lastSeq };
    }
    return hello;
  }

  /** Writes `frame` on the current socket if it is open; false when it is not. */
  #write(frame: ClientFrame): boolean {
    const socket = this.#socket;
    if (!socket || socket.readyState !== OPEN) return false;
    try {
      socket.send(JSON.stringify(frame));
    } catch {
      return false;
    }
    const shown = frame.type === "hello" && frame.token !== undefined ? { ...frame, token: "(hidden)" } : frame;
    this.#sink.wire("out", shown);
    return true;
  }

  #receive(data: unknown): void {
    const text = messageText(data);
    const frame = text === undefined ? undefined : parseFrame(text);
    if (!frame) return;
    this.#heardSinceTick = true;
    this.#pinged = false;
    if (!this.#welcomed) {
      if (frame.type === "welcome") this.#welcome(frame);
      return;
    }
    if (typeof frame.seq === "number") {
      // Frames are numbered without gaps; one at or below the last is one we have.
      if (frame.seq <= this.#lastSeq) return;
      this.#lastSeq = frame.seq;
      if (++this.#unacked >= this.#ackEvery) {
        this.#unacked = 0;
        this.#write({ type: "ack", seq: frame.seq });
      }
    }
    this.#deliver(() => {
      this.#sink.wire("in", frame);
      if (frame.type !== "pong") this.#sink.frame(frame);
    });
  }

  #welcome(frame: GatewayFrame): void {
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
      if (this.#state === "closed") return;
      this.#state = "open";
      this.#sink.wire("in", frame);
      this.#sink.welcome(frame, resumed, first);
      const queued = this.#outbox.splice(0);
      for (const entry of queued) {
        if (first || resumed) {
          if (this.#write(entry.frame)) entry.resolve();
          else this.#outbox.push(entry);
        } else {
          entry.reject(
            new MuxError("session_lost", "the gateway could not resume the session; initialize again"),
          );
        }
      }
      this.#sink.connection(first ? { state: "open" } : { state: "open", resumed });
      if (first) this.#opened?.resolve();
    });
  }

  #startHeartbeat(intervalMs: unknown): void {
    clearInterval(this.#heartbeatTimer);
    const ms = typeof intervalMs === "number" && intervalMs > 0 ? intervalMs : DEFAULT_HEARTBEAT_MS;
    this.#heardSinceTick = false;
    this.#pinged = false;
    const socket = this.#socket;
    this.#heartbeatTimer = setInterval(() => {
      if (this.#heardSinceTick) {
        this.#heardSinceTick = false;
      } else if (!this.#pinged) {
        this.#pinged = true;
        this.#write({ type: "ping" });
      } else if (socket) {
        this.#abandon(socket, "no frame and no pong from the gateway for two heartbeat intervals");
      }
    }, ms);
  }

  /** Gives up a socket that went silent: drops it (without a close frame where possible). */
  #abandon(socket: SocketLike, reason: string): void {
    if (socket !== this.#socket) return;
    detach(socket);
    if (socket.terminate) socket.terminate();
    else {
      try {
        socket.close();
      } catch {
        // Already closing.
      }
    }
    this.#socketEnded(socket, 1006, reason);
  }

  #socketEnded(socket: SocketLike | undefined, code: number, reason: string): void {
    if (socket !== this.#socket) return;
    if (socket) detach(socket);
    this.#socket = undefined;
    clearTimeout(this.#welcomeTimer);
    clearInterval(this.#heartbeatTimer);
    if (this.#state === "closed") return;
    if (!this.#everWelcomed) {
      const error = new MuxError(
        "connect_failed",
        `could not open a session with ${describeUrl(this.#url)}: ${describeClose(code, reason)}`,
        { data: { code, reason } },
      );
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
      if (this.#state !== "closed") this.#openSocket();
    }, backoffDelay(attempt - 1, this.#minDelayMs, this.#maxDelayMs));
  }

  /** Ends the connection for good: nothing is sent or retried after this. */
  #end(error: MuxError, code: number, reason: string): void {
    this.#state = "closed";
    this.#endError = error;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#welcomeTimer);
    clearInterval(this.#heartbeatTimer);
    const socket = this.#socket;
    this.#socket = undefined;
    if (socket) detach(socket);
    for (const entry of this.#outbox.splice(0)) entry.reject(error);
    // After the frames that arrived before the end, so that their responses still settle.
    this.#deliver(() => {
      this.#sink.ended(error);
      this.#sink.connection({ state: "closed", code, reason });
    });
  }

  #closedError(): MuxError {
    return this.#endError ?? new MuxError("closed", "the connection is closed");
  }

  /** Queues a task for the sink; tasks run in order, one per event-loop task. */
  #deliver(task: () => void): void {
    this.#inbox.push(task);
    if (this.#pumping) return;
    this.#pumping = true;
    this.#schedule(this.#pump);
  }

  #pump = (): void => {
    const task = this.#inbox[this.#inboxHead];
    this.#inbox[this.#inboxHead++] = noop;
    if (this.#inboxHead === this.#inbox.length) {
      this.#inbox = [];
      this.#inboxHead = 0;
      this.#pumping = false;
    } else {
      this.#schedule(this.#pump);
    }
    task?.();
  };
}

function noop(): void {}

function detach(socket: SocketLike): void {
  socket.onopen = null;
  socket.onmessage = null;
  socket.onclose = null;
  socket.onerror = () => {};
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !(value > 0)) {
    throw new TypeError(`mcpmux: ${name} must be a positive number, got ${String(value)}`);
  }
  return value;
}

function describeClose(code: number, reason: string): string {
  return reason ? `close code ${code} (${reason})` : `close code ${code}`;
}
