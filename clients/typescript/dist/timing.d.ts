/**
 * Time and order: what a close code means for reconnecting (one table, protocol.md
 * section 10), the reconnect delay (full-jitter exponential backoff) and the
 * macrotask scheduler that hands incoming frames to the application one per event-loop
 * task, as browsers deliver WebSocket messages (Node's `ws` delivers several per task,
 * and promise-based code such as the MCP SDK then sees them out of order).
 * @module
 */
/**
 * What to do after a socket closed with `code`:
 * - `reconnect`: 1000, 1001, 4000-4499 and every code that says the network or the
 *   gateway failed (1006 without a close frame, 1011-1015);
 * - `slow`: 4029 (over a limit): reconnect, but start the backoff at its highest;
 * - `moved`: 4002, another socket resumed the session, which lives on there: never;
 * - `fatal`: 4500-4999 and the codes that say the client is wrong (1002, 1003,
 *   1007-1010): never retried unchanged.
 */
export type CloseAction = "reconnect" | "slow" | "moved" | "fatal";
export declare function closeAction(code: number): CloseAction;
/**
 * The delay before reconnect attempt `attempt` (0 for the first) after a close whose
 * action is `action`: full jitter under the exponential ceiling, or, for `slow`, a
 * random time in the upper half of `maxMs`.
 */
export declare function reconnectDelay(action: CloseAction, attempt: number, minMs: number, maxMs: number, random?: () => number): number;
/**
 * The delay before reconnect attempt `attempt` (0 for the first): a random time in
 * `[0, min(maxMs, minMs * 2^attempt))`, the "full jitter" of exponential backoff.
 */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;
type Task = () => void;
/** Returns a function that runs its argument on a macrotask of its own. */
export declare function macrotaskScheduler(): (task: Task) => void;
export {};
