/**
 * When a primary replaces a worker that ended, and when that is a crash loop:
 * the policy of worker-group.ts, kept apart from its mechanics.
 */
import { EcdysisError } from '../errors.ts';

/** Backoff before replacing a worker again: the first replacement at once, then doubling, at most this. */
export const MAX_BACKOFF_MS = 10_000;
const FIRST_BACKOFF_MS = 250;
/**
 * A worker that served this long before it ended is replaced at once; one that
 * ended sooner (or never got ready) is a quick failure, and each one in a row
 * doubles the wait before the next replacement.
 */
export const HEALTHY_AFTER_MS = 1_000;
/** This many unplanned ends of workers within the window is a crash loop. */
const CRASH_LOOP_FAILURES = 5;
const CRASH_LOOP_WINDOW_MS = 60_000;

/** The wait before replacing a worker after `failures` quick failures in a row on its index. */
export function backoffMs(failures: number): number {
  return failures <= 1 ? 0 : Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (failures - 2));
}

/** Unplanned ends of a group's workers, in a sliding window. */
export class CrashWindow {
  #crashes: number[] = [];
  #reported = false;

  /** Counts one end; returns the crash loop's error the first time the window holds enough of them (once per loop). */
  record(generation: number): EcdysisError | undefined {
    const now = performance.now();
    this.#crashes = [...this.#crashes.filter((t) => now - t < CRASH_LOOP_WINDOW_MS), now];
    if (this.#crashes.length < CRASH_LOOP_FAILURES) {
      this.#reported = false;
      return undefined;
    }
    if (this.#reported) return undefined;
    this.#reported = true;
    return new EcdysisError(
      'ERR_ECDYSIS_WORKER_CRASH_LOOP',
      `workers of generation ${generation} ended ${this.#crashes.length} times within ${CRASH_LOOP_WINDOW_MS / 1000} s; ` +
        `they are still replaced, at most every ${MAX_BACKOFF_MS / 1000} s, and the others serve`,
    );
  }

  /** Ends in the window now. */
  get count(): number {
    return this.#crashes.length;
  }
}
