/**
 * A small typed event emitter: `on` returns the function that removes the listener, and
 * a listener that throws never disturbs the library (its error is rethrown on its own
 * task, where the runtime reports it).
 * @module
 */
/** Listeners by event name, for the event map `Events`. */
export class Emitter {
    #listeners = new Map();
    /** Adds a listener; the returned function removes it. */
    on(event, fn) {
        let set = this.#listeners.get(event);
        if (!set) {
            set = new Set();
            this.#listeners.set(event, set);
        }
        set.add(fn);
        return () => {
            set.delete(fn);
        };
    }
    /** True when `event` has at least one listener. */
    has(event) {
        return (this.#listeners.get(event)?.size ?? 0) > 0;
    }
    /** Calls every listener of `event` with `value`, in the order they were added. */
    emit(event, value) {
        const set = this.#listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set])
            callSafely(fn, value);
    }
}
/** Calls `fn(value)`; an exception is reported on a task of its own, not thrown here. */
export function callSafely(fn, value) {
    try {
        fn(value);
    }
    catch (error) {
        setTimeout(() => {
            throw error;
        }, 0);
    }
}
