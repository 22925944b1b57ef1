/** A minimal typed event emitter (no dependency on Node's or the DOM's). */
export class Emitter<Events extends { [K in keyof Events]: unknown }> {
  #listeners = new Map<keyof Events, Set<(value: never) => void>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(name: K, listener: (value: Events[K]) => void): () => void {
    let set = this.#listeners.get(name);
    if (!set) {
      set = new Set();
      this.#listeners.set(name, set);
    }
    set.add(listener as (value: never) => void);
    return () => this.off(name, listener);
  }

  off<K extends keyof Events>(name: K, listener: (value: Events[K]) => void): void {
    this.#listeners.get(name)?.delete(listener as (value: never) => void);
  }

  /** Calls every listener; a throwing listener does not stop the others. */
  protected emit<K extends keyof Events>(name: K, value: Events[K]): void {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as (value: Events[K]) => void)(value);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }
}

export function reportListenerError(err: unknown): void {
  // Surface it without breaking the SDK's own bookkeeping.
  setTimeout(() => {
    throw err;
  }, 0);
}
