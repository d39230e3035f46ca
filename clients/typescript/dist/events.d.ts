/**
 * A small typed event emitter: `on` returns the function that removes the listener, and
 * a listener that throws never disturbs the library (its error is rethrown on its own
 * task, where the runtime reports it).
 * @module
 */
type Listener<T> = (event: T) => void;
/** Listeners by event name, for the event map `Events`. */
export declare class Emitter<Events extends object> {
    #private;
    /** Adds a listener; the returned function removes it. */
    on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void;
    /** True when `event` has at least one listener. */
    has<K extends keyof Events>(event: K): boolean;
    /** Calls every listener of `event` with `value`, in the order they were added. */
    emit<K extends keyof Events>(event: K, value: Events[K]): void;
}
/** Calls `fn(value)`; an exception is reported on a task of its own, not thrown here. */
export declare function callSafely<T>(fn: (value: T) => void, value: T): void;
export {};
