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
/** `text` as base64url without padding (RFC 4648, section 5), from its UTF-8 bytes. */
export function base64url(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text))
        binary += String.fromCharCode(byte);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
/** The upgrade URL: `url`, plus `?session=ID` when resuming so a balancer can route it. */
export function upgradeUrl(url, session) {
    if (session === undefined)
        return url;
    const base = globalThis.location?.href;
    const parsed = new URL(url, base);
    parsed.searchParams.set("session", session);
    return parsed.toString();
}
/** `url` without its query, fragment or credentials, for error messages. */
export function describeUrl(url) {
    try {
        const base = globalThis.location?.href;
        const parsed = new URL(url, base);
        return `${parsed.protocol}//${parsed.host}${parsed.pathname}`;
    }
    catch {
        return "the gateway";
    }
}
/** The text of a WebSocket message event's data (text frames; bytes decoded as UTF-8). */
export function messageText(data) {
    if (typeof data === "string")
        return data;
    if (data instanceof ArrayBuffer)
        return new TextDecoder().decode(data);
    if (ArrayBuffer.isView(data))
        return new TextDecoder().decode(data);
    return undefined;
}
/** A frame's parsed JSON object, or undefined when the text is not one. */
export function parseFrame(text) {
    try {
        const value = JSON.parse(text);
        return typeof value === "object" && value !== null && !Array.isArray(value)
            ? value
            : undefined;
    }
    catch {
        return undefined;
    }
}
