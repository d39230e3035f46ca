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
import { closeAction, macrotaskScheduler, reconnectDelay, type CloseAction } from "./timing.js";
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
   * exponential backoff: random in [0, min(maxDelayMs, minDelayMs * 2^attempt)); after
   * 4029, in the upper half of maxDelayMs. The attempt count starts again only once a
   * socket has stayed up 15 s. Defaults: minDelayMs 250, maxDelayMs 10000, maxAttempts
   * Infinity, maxFailures 10 (attempts in a row that end before a `welcome`: a gateway
   * that is gone, or one that refuses the upgrade, which browsers cannot tell apart).
   */
  reconnect?:
    | boolean
    | { minDelayMs?: number; maxDelayMs?: number; maxAttempts?: number; maxFailures?: number };
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

/** The part of a WebSocket this library uses (browsers' and `ws`'s both fit). */
interface SocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drop the TCP connection without a close frame. */
  terminate?(): void;
  /** `ws` only: stop and start reading the socket. */
  pause?(): void;
  resume?(): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

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

interface Queued {
  frame: ClientFrame;
  text: string;
  resolve(): void;
  reject(error: MuxError): void;
}

/** A frame written after `hello`, numbered as the gateway counts them (protocol.md, 8). */
interface Unconfirmed {
  n: number;
  frame: ClientFrame;
  text: string;
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
  readonly #maxFailures: number;
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
  /** Attempts in a row that ended before a `welcome`. */
  #failures = 0;
  /** When the current socket got its `welcome`. */
  #welcomedAt = 0;
  /** The HTTP status that refused the current socket's upgrade, where the WebSocket says. */
  #refusedStatus: number | undefined;
  #endError: MuxError | undefined;

  /** Frames written while no socket was open. */
  #outbox: Queued[] = [];
  #outboxBytes = 0;
  /** Frames written after `hello` in this client session (the gateway's `received`). */
  #written = 0;
  /** Frames written but not known to be read, oldest first. */
  #unconfirmed: Unconfirmed[] = [];
  #unconfirmedBytes = 0;
  /** The number of the `ping` whose `pong` is awaited; its pong confirms every frame up to it. */
  #probe: number | undefined;
  /** Received frames (as tasks, with their size) not yet handed to the sink. */
  #inbox: Array<{ task: () => void; bytes: number }> = [];
  #inboxHead = 0;
  #inboxBytes = 0;
  #pumping = false;
  /** The socket paused because the inbox is full, until it drains. */
  #paused: SocketLike | undefined;

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
    this.#maxFailures = positive(tuning.maxFailures, 10, "reconnect.maxFailures");
    this.#ackEvery = positive(options.ackEvery, 100, "ackEvery");
  }

  /** The current state. */
  get state(): ConnectionEvent["state"] {
    return this.#state;
  }

  /** Whether frames are written now (a socket has its `welcome`); else they are queued. */
  get isOpen(): boolean {
    return this.#welcomed && this.#socket?.readyState === OPEN;
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
    const text = JSON.stringify(frame);
    if (this.#transmit(frame, text)) return Promise.resolve();
    if (this.#outbox.length >= MAX_QUEUED_FRAMES || this.#outboxBytes + text.length > MAX_QUEUED_BYTES) {
      return Promise.reject(
        new MuxError(
          "queue_full",
          `${this.#outbox.length} frames (${this.#outboxBytes} bytes) are already waiting for the connection to come back`,
        ),
      );
    }
    return new Promise<void>((resolve, reject) => {
      this.#outbox.push({ frame, text, resolve, reject });
      this.#outboxBytes += text.length;
    });
  }

  /**
   * Ends the connection with close code 1000 (the gateway ends the session). Settles at
   * once when no socket is open (while reconnecting): there is no one to tell.
   */
  close(): Promise<void> {
    if (this.#state === "closed") return Promise.resolve();
    const socket = this.#socket;
    this.#end(new MuxError("closed", "the connection was closed by the client"), 1000, "");
    if (!socket) return Promise.resolve();
    if (socket.readyState !== OPEN) {
      detach(socket);
      socket.terminate?.();
      try {
        socket.close();
      } catch {
        // Already closing.
      }
      return Promise.resolve();
    }
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
    this.#refusedStatus = undefined;
    socket.onopen = () => {
      if (socket === this.#socket) this.#writeHello(socket);
    };
    socket.onmessage = (event) => {
      if (socket === this.#socket) this.#receive(event.data);
    };
    socket.onclose = (event) => this.#socketEnded(socket, event.code, event.reason);
    socket.onerror = (event) => {
      // A close event follows. Node's ws says why an upgrade was refused; browsers do not.
      const status = /Unexpected server response: (\d{3})/.exec(String((event as { message?: unknown })?.message));
      if (status && socket === this.#socket) this.#refusedStatus = Number(status[1]);
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

  /** Writes `hello`, which the gateway does not count among the session's frames. */
  #writeHello(socket: SocketLike): void {
    const hello = this.#hello();
    try {
      socket.send(JSON.stringify(hello));
    } catch {
      return; // the close event follows
    }
    this.#sink.wire("out", hello.type === "hello" && hello.token !== undefined ? { ...hello, token: "(hidden)" } : hello);
  }

  /**
   * Writes `frame` on the current socket once it has its `welcome`; false when there is
   * none. The frame is numbered and kept until the gateway is known to have read it.
   */
  #transmit(frame: ClientFrame, text: string = JSON.stringify(frame)): boolean {
    const socket = this.#socket;
    if (!this.#welcomed || !socket || socket.readyState !== OPEN) return false;
    try {
      socket.send(text);
    } catch {
      return false;
    }
    this.#written++;
    this.#keep({ n: this.#written, frame, text });
    this.#sink.wire("out", frame);
    if (frame.type === "ping") {
      this.#probe = this.#written;
    } else if (
      this.#probe === undefined &&
      (this.#unconfirmed.length >= CONFIRM_AFTER_FRAMES || this.#unconfirmedBytes >= CONFIRM_AFTER_BYTES)
    ) {
      this.#transmit({ type: "ping" });
    }
    return true;
  }

  /** Keeps a written frame for a resend, giving up the oldest beyond the bounds. */
  #keep(entry: Unconfirmed): void {
    this.#unconfirmed.push(entry);
    this.#unconfirmedBytes += entry.text.length;
    while (
      this.#unconfirmed.length > 1 &&
      (this.#unconfirmed.length > MAX_UNCONFIRMED_FRAMES || this.#unconfirmedBytes > MAX_UNCONFIRMED_BYTES)
    ) {
      const oldest = this.#unconfirmed.shift()!;
      this.#unconfirmedBytes -= oldest.text.length;
      const error = new MuxError(
        "resend_overflow",
        `the gateway has not confirmed the last ${this.#unconfirmed.length} frames written, ` +
          `more than can be kept for a resend (${MAX_UNCONFIRMED_FRAMES} frames, ${MAX_UNCONFIRMED_BYTES} bytes): ` +
          `the oldest is given up`,
      );
      this.#sink.unconfirmed(oldest.frame, error);
    }
  }

  /** The gateway has read every frame up to number `n`. */
  #confirm(n: number): void {
    let drop = 0;
    while (drop < this.#unconfirmed.length && this.#unconfirmed[drop]!.n <= n) {
      this.#unconfirmedBytes -= this.#unconfirmed[drop]!.text.length;
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
  #resend(received: number): void {
    this.#confirm(received);
    const again = this.#unconfirmed;
    this.#unconfirmed = [];
    this.#unconfirmedBytes = 0;
    this.#probe = undefined;
    this.#written = Math.max(received, 0);
    for (const [index, entry] of again.entries()) {
      if (entry.frame.type === "ping" || entry.frame.type === "ack") continue;
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
    if (frame.type === "pong" && this.#probe !== undefined) {
      // The gateway answers a ping once it has read it, and reads frames in order.
      this.#confirm(this.#probe);
      this.#probe = undefined;
    }
    if (typeof frame.seq === "number") {
      // Frames are numbered without gaps; one at or below the last is one we have.
      if (frame.seq <= this.#lastSeq) return;
      this.#lastSeq = frame.seq;
      if (++this.#unacked >= this.#ackEvery) {
        this.#unacked = 0;
        this.#transmit({ type: "ack", seq: frame.seq });
      }
    }
    this.#deliver(() => {
      this.#sink.wire("in", frame);
      if (frame.type !== "pong") this.#sink.frame(frame);
    }, text!.length);
    this.#bound();
  }

  /** Keeps the inbox bounded: pauses the socket, or ends the connection if it cannot. */
  #bound(): void {
    const socket = this.#socket;
    const waiting = this.#inbox.length - this.#inboxHead;
    if (!socket || this.#paused === socket) return;
    if (waiting < INBOX_PAUSE_FRAMES && this.#inboxBytes < INBOX_PAUSE_BYTES) return;
    if (typeof socket.pause === "function" && typeof socket.resume === "function") {
      socket.pause();
      this.#paused = socket;
      return;
    }
    if (waiting < INBOX_MAX_FRAMES && this.#inboxBytes < INBOX_MAX_BYTES) return;
    const reason = "the client does not keep up";
    const error = new MuxError(
      "inbox_full",
      `${waiting} frames (${this.#inboxBytes} bytes) from the gateway wait for the application, ` +
        `more than ${INBOX_MAX_FRAMES} (${INBOX_MAX_BYTES} bytes): the connection is closed`,
      { data: { code: 1000, reason } },
    );
    this.#end(error, 1000, reason);
    try {
      socket.close(1000, reason);
    } catch {
      // Already closing.
    }
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
    this.#failures = 0;
    this.#welcomedAt = Date.now();
    this.#startHeartbeat(frame.heartbeat_ms);
    // What was written before goes first, now, so that nothing written later overtakes it.
    if (resumed) {
      // A gateway that does not say what it read gets nothing again.
      this.#resend(typeof frame.received === "number" ? frame.received : this.#written);
    } else {
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
      if (this.#state === "closed") return;
      this.#state = "open";
      this.#sink.wire("in", frame);
      this.#sink.welcome(frame, resumed, first);
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
        // A ping already awaiting its pong serves.
        if (this.#probe === undefined) this.#transmit({ type: "ping" });
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
      const status = this.#refusedStatus;
      const error = new MuxError(
        "connect_failed",
        `could not open a session with ${describeUrl(this.#url)}: ${status ? `HTTP ${status}, ` : ""}${describeClose(code, reason)}`,
        { data: status ? { code, reason, status } : { code, reason } },
      );
      this.#opened?.reject(error);
      this.#end(error, code, reason);
      return;
    }
    const welcomed = this.#welcomed;
    this.#welcomed = false;
    if (welcomed && Date.now() - this.#welcomedAt >= STABLE_MS) this.#attempt = 0;
    if (!welcomed) this.#failures++;
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
      if (this.#state !== "closed") this.#openSocket();
    }, reconnectDelay(action, attempt - 1, this.#minDelayMs, this.#maxDelayMs));
  }

  /** The error that ends the connection after a socket closed with `code`, if it must end. */
  #refusal(code: number, reason: string): MuxError | undefined {
    const data = { code, reason };
    const action: CloseAction = closeAction(code);
    if (action === "moved") {
      return new MuxError(
        "session_moved",
        `another connection resumed this session, which now lives there (${describeClose(code, reason)}); this one does not reconnect`,
        { data },
      );
    }
    if (action === "fatal") {
      return new MuxError("closed", `the gateway closed the connection: ${describeClose(code, reason)}`, { data });
    }
    const status = this.#refusedStatus;
    if (status === 401 || status === 403) {
      return new MuxError(
        "refused",
        `the gateway refused the upgrade with HTTP ${status}${status === 401 ? " (a wrong or missing API key)" : " (an origin or host it does not allow)"}`,
        { data: { ...data, status } },
      );
    }
    if (this.#failures >= this.#maxFailures) {
      return new MuxError(
        "reconnect_failed",
        `${this.#failures} attempts in a row ended before the gateway said welcome (the last: ${describeClose(code, reason)}): ` +
          "it is unreachable, or it refuses the upgrade (HTTP 401 or 403 show as 1006 in a browser)",
        { data },
      );
    }
    return undefined;
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
    this.#outboxBytes = 0;
    this.#unconfirmed = [];
    this.#unconfirmedBytes = 0;
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
  #deliver(task: () => void, bytes = 0): void {
    this.#inbox.push({ task, bytes });
    this.#inboxBytes += bytes;
    if (this.#pumping) return;
    this.#pumping = true;
    this.#schedule(this.#pump);
  }

  #pump = (): void => {
    const entry = this.#inbox[this.#inboxHead];
    this.#inbox[this.#inboxHead++] = DONE;
    this.#inboxBytes -= entry?.bytes ?? 0;
    if (this.#inboxHead === this.#inbox.length) {
      this.#inbox = [];
      this.#inboxHead = 0;
      this.#pumping = false;
    } else {
      this.#schedule(this.#pump);
    }
    const paused = this.#paused;
    if (
      paused &&
      this.#inbox.length - this.#inboxHead <= INBOX_PAUSE_FRAMES / 2 &&
      this.#inboxBytes <= INBOX_PAUSE_BYTES / 2
    ) {
      this.#paused = undefined;
      if (paused === this.#socket) paused.resume?.();
    }
    entry?.task();
  };
}

const DONE = { task(): void {}, bytes: 0 };

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
