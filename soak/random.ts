/**
 * A seeded pseudo-random source, so that a soak run's sequence of behaviours
 * and pauses can be replayed with `--seed`. Statistical quality hardly matters
 * here; reproducibility does. Marsaglia's xorshift32 (2003).
 */
export class Random {
  #state: number;

  constructor(seed: number) {
    // xorshift never leaves 0; any other 32-bit value is a valid state.
    this.#state = seed >>> 0 || 0x9e3779b9;
  }

  /** A float in [0, 1). */
  next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state / 0x1_0000_0000;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
}
