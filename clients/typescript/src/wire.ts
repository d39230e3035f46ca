/**
 * The `mcpmux.v1` wire format as this client sees it: frame shapes, JSON-RPC message
 * shapes, and the two encodings the handshake needs (the key as a subprotocol, the
 * session in the upgrade URL). See protocol.md in the mcpmux repository.
 * @module
 */

/** The subprotocol of this version of the protocol. */
export const SUBPROTOCOL = "mcpmux.v1";

/** The prefix of the subprotocol that carries an API key. */
export const BEARER_PREFIX = "mcpmux.bearer.";

/** This library's version, sent in `hello` when the caller names no client. */
export const CLIENT_VERSION = "0.1.0";

/** A JSON-RPC id. */
export type RequestId = string | number;

/** Any JSON-RPC 2.0 message: request, notification or response. */
export interface JsonRpcMessage {
  jsonrpc: "2.0";
  id?: RequestId | null;
  method?: string;
  params?: Record<string, unknown>;
  result?: unknown;
  error?: { code: number; message: string; data?: unknown };
}

/** A frame from the gateway, as far as this client looks into it. */
export interface GatewayFrame {
  type: string;
  seq?: number;
  server?: string;
  state?: string;
  reason?: string;
  message?: unknown;
  code?: string;
  ref?: unknown;
  session?: string;
  resumed?: boolean;
  heartbeat_ms?: number;
  /** With `welcome`: client frames of the session the gateway has read after `hello`. */
  received?: number;
  servers?: Array<{ name: string; state: string }>;
  [field: string]: unknown;
}

/** A frame this client sends. */
export type ClientFrame =
  | {
      type: "hello";
      client: { name: string; version?: string };
      token?: string;
      resume?: { session: string; last_seq: number };
    }
  | { type: "rpc"; server: string; message: JsonRpcMessage }
  | { type: "close"; server: string }
  | { type: "ack"; seq: number }
  | { type: "ping" };

/** `text` as base64url without padding (RFC 4648, section 5), from its UTF-8 bytes. */
export function base64url(text: string): string {
  let binary = "";
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** The upgrade URL: `url`, plus `?session=ID` when resuming so a balancer can route it. */
export function upgradeUrl(url: string, session: string | undefined): string {
  if (session === undefined) return url;
  const base = (globalThis as { location?: { href?: string } }).location?.href;
  const parsed = new URL(url, base);
  parsed.searchParams.set("session", session);
  return parsed.toString();
}

/** `url` without its query, fragment or credentials, for error messages. */
export function describeUrl(url: string): string {
  try {
    const base = (globalThis as { location?: { href?: string } }).location?.href;
    const parsed = new URL(url, base);
    return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
  } catch {
    return "the gateway";
  }
}

/** The text of a WebSocket message event's data (text frames; bytes decoded as UTF-8). */
export function messageText(data: unknown): string | undefined {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer) return new TextDecoder().decode(data);
  if (ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  return undefined;
}

/** A frame's parsed JSON object, or undefined when the text is not one. */
export function parseFrame(text: string): GatewayFrame | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return typeof value === "object" && value !== null && !Array.isArray(value)
      ? (value as GatewayFrame)
      : undefined;
  } catch {
    return undefined;
  }
}
