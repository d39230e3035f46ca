/**
 * The one error type of the library: every rejected call and every failure a listener
 * is told about is a `MuxError` with a short machine-readable `code`.
 *
 * Codes (see README.md): the gateway's own codes from `error.data.gateway`
 * (`timeout`, `session_lost`, `unknown_server`, ...); `rpc_error` for a JSON-RPC error
 * that the MCP server itself sent; and the client's own: `timeout`, `aborted`,
 * `session_lost`, `session_moved`, `closed`, `refused`, `reconnect_failed`, `connect_failed`,
 * `queue_full`, `resend_overflow`, `inbox_full`.
 * @module
 */
/** A JSON-RPC or gateway error, or one of the client's own failures. */
export declare class MuxError extends Error {
    /** What went wrong, for programs: a gateway code, `rpc_error`, or a client code. */
    readonly code: string;
    /** Details: the JSON-RPC error's `data`, or the close code and reason of a socket. */
    readonly data?: unknown;
    /** The JSON-RPC `error.code` when the error came in a JSON-RPC response. */
    readonly rpcCode?: number;
    constructor(code: string, message: string, options?: {
        data?: unknown;
        rpcCode?: number;
        cause?: unknown;
    });
    /** The error that a JSON-RPC `error` member stands for. */
    static fromRpc(error: unknown): MuxError;
}
