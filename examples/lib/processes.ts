/** Process checks shared by the demo, the tests and bench/. */
import { readFileSync } from 'node:fs';

/**
 * The fields of /proc/<pid>/stat after "pid (comm) ": [0] is the state, [1] the
 * parent pid, [11] and [12] user and system time in ticks. Undefined when gone.
 */
export function statFields(pid: number | string): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** The one-letter state from /proc/<pid>/stat, or undefined when the pid is gone. */
export function processState(pid: number): string | undefined {
  return statFields(pid)?.[0];
}

/**
 * True while the process runs. A zombie has exited: it only waits for its
 * parent (for an orphaned old generation, init) to reap it, which some inits do
 * only periodically.
 */
export function isRunning(pid: number): boolean {
  const state = processState(pid);
  return state !== undefined && state !== 'Z';
}

/** Resolve once `pid` has exited; reject after `timeoutMs`. Polls every 2 ms. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (isRunning(pid)) {
    if (Date.now() > deadline) throw new Error(`pid ${pid} did not exit within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
