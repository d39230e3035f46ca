/**
 * Time and order: what a close code means for reconnecting (one table, protocol.md
 * section 10), the reconnect delay (full-jitter exponential backoff) and the
 * macrotask scheduler that hands incoming frames to the application one per event-loop
 * task, as browsers deliver WebSocket messages (Node's `ws` delivers several per task,
 * and promise-based code such as the MCP SDK then sees them out of order).
 * @module
 */
export function closeAction(code) {
    if (code === 4002)
        return "moved";
    if (code === 4029)
        return "slow";
    if (code >= 4500 && code <= 4999)
        return "fatal";
    if (code === 1002 || code === 1003 || (code >= 1007 && code <= 1010))
        return "fatal";
    return "reconnect";
}
/**
 * The delay before reconnect attempt `attempt` (0 for the first) after a close whose
 * action is `action`: full jitter under the exponential ceiling, or, for `slow`, a
 * random time in the upper half of `maxMs`.
 */
export function reconnectDelay(action, attempt, minMs, maxMs, random = Math.random) {
    if (action === "slow")
        return Math.floor(maxMs / 2 + (random() * maxMs) / 2);
    return backoffDelay(attempt, minMs, maxMs, random);
}
/**
 * The delay before reconnect attempt `attempt` (0 for the first): a random time in
 * `[0, min(maxMs, minMs * 2^attempt))`, the "full jitter" of exponential backoff.
 */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
    const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return Math.floor(random() * ceiling);
}
/** Returns a function that runs its argument on a macrotask of its own. */
export function macrotaskScheduler() {
    const g = globalThis;
    if (typeof g.setImmediate === "function") {
        const setImmediate = g.setImmediate;
        return (task) => {
            setImmediate(task);
        };
    }
    if (typeof g.MessageChannel === "function") {
        // A message to a channel is a macrotask without setTimeout's clamping.
        const channel = new g.MessageChannel();
        const tasks = [];
        channel.port1.onmessage = () => tasks.shift()?.();
        return (task) => {
            tasks.push(task);
            channel.port2.postMessage(null);
        };
    }
    return (task) => {
        setTimeout(task, 0);
    };
}
