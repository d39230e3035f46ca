/**
 * A small typed event emitter: `on` returns the function that removes the listener, and
 * a listener that throws never disturbs the library (its error is rethrown on its own
 * task, where the runtime reports it).
 * @module
 */

type Listener<T> = (event: T) => void;

/** Listeners by event name, for the event map `Events`. */
export class Emitter<Events extends object> {
  #listeners = new Map<keyof Events, Set<Listener<never>>>();

  /** Adds a listener; the returned function removes it. */
  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    let set = this.#listeners.get(event);
    if (!set) {
      set = new Set();
      this.#listeners.set(event, set);
    }
    set.add(fn as Listener<never>);
    return () => {
      set.delete(fn as Listener<never>);
    };
  }

  /** True when `event` has at least one listener. */
  has<K extends keyof Events>(event: K): boolean {
    return (this.#listeners.get(event)?.size ?? 0) > 0;
  }

  /** Calls every listener of `event` with `value`, in the order they were added. */
  emit<K extends keyof Events>(event: K, value: Events[K]): void {
    const set = this.#listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) callSafely(fn as Listener<Events[K]>, value);
  }
}

/** Calls `fn(value)`; an exception is reported on a task of its own, not thrown here. */
export function callSafely<T>(fn: (value: T) => void, value: T): void {
  try {
    fn(value);
  } catch (error) {
    setTimeout(() => {
      throw error;
    }, 0);
  }
}
