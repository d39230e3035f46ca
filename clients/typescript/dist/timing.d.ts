/**
 * Time and order: the reconnect delay (full-jitter exponential backoff) and the
 * macrotask scheduler that hands incoming frames to the application one per event-loop
 * task, as browsers deliver WebSocket messages (Node's `ws` delivers several per task,
 * and promise-based code such as the MCP SDK then sees them out of order).
 * @module
 */
/**
 * The delay before reconnect attempt `attempt` (0 for the first): a random time in
 * `[0, min(maxMs, minMs * 2^attempt))`, the "full jitter" of exponential backoff.
 */
export declare function backoffDelay(attempt: number, minMs: number, maxMs: number, random?: () => number): number;
type Task = () => void;
/** Returns a function that runs its argument on a macrotask of its own. */
export declare function macrotaskScheduler(): (task: Task) => void;
export {};
