/**
 * The official MCP TypeScript SDK's `Transport` over a mux: one server's messages, so
 * that `new Client(info).connect(mux.transport("everything"))` works unchanged and
 * several SDK clients share one WebSocket. Messages arrive one per event-loop task, in
 * order, so the SDK sees a request's progress before its result.
 * @module
 */
import type { Mux } from "./mux.js";
/**
 * The SDK's `Transport` contract (`@modelcontextprotocol/sdk/shared/transport.js`),
 * restated so that this library needs no dependency on the SDK.
 */
export interface Transport {
    start(): Promise<void>;
    send(message: any, options?: any): Promise<void>;
    close(): Promise<void>;
    onclose?: (() => void) | undefined;
    onerror?: ((error: Error) => void) | undefined;
    onmessage?: ((message: any, extra?: any) => void) | undefined;
    sessionId?: string | undefined;
    setProtocolVersion?: ((version: string) => void) | undefined;
}
/** One server's SDK transport on a mux. Made by `mux.transport(name)`. */
export declare class MuxTransport implements Transport {
    #private;
    onclose?: (() => void) | undefined;
    onerror?: ((error: Error) => void) | undefined;
    onmessage?: ((message: any, extra?: any) => void) | undefined;
    /**
     * Left undefined: the SDK's `Client` skips `initialize` on a transport that has one,
     * and the gateway's upstream session needs no id from the client.
     */
    sessionId?: string | undefined;
    /** The server this transport talks to. */
    readonly server: string;
    /** Made by `mux.transport(name)`. */
    constructor(mux: Mux, server: string);
    /** The MCP revision the SDK negotiated, once it said. */
    get protocolVersion(): string | undefined;
    /** Starts receiving the server's messages (one started transport per server). */
    start(): Promise<void>;
    /** Carries one JSON-RPC message to the server. */
    send(message: any): Promise<void>;
    /** Ends the upstream session (the `close` frame) and calls `onclose`. */
    close(): Promise<void>;
    setProtocolVersion(version: string): void;
}
