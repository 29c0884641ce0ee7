/**
 * Option `niceWhileStarting`: the next generation starts at a lower CPU
 * priority (a higher nice value) than the serving one, so that on a busy
 * machine its start-up (Node's bootstrap, the application's imports and
 * initialisation: a burst of CPU) takes CPU time from idle moments rather
 * than from the requests the serving generation answers; once the successor is
 * ready the serving generation gives it back its own priority, at the commit.
 *
 * Lowering a nice value again needs CAP_SYS_NICE or an RLIMIT_NICE that allows
 * it; without either, the successor would stay at the lower priority for good,
 * so the option is then not used at all (warning ECDYSIS_NICE_UNAVAILABLE).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';

const CAP_SYS_NICE = 23;

/** The nice values Linux has. */
export const MIN_NICE = -20;
export const MAX_NICE = 19;

/**
 * Whether this process may bring a process of its own from a higher nice value
 * back down to `nice`: CAP_SYS_NICE in its effective set, or an RLIMIT_NICE of
 * at least 20 - nice (setpriority(2), getrlimit(2)). Read from /proc/self.
 */
export function canRestoreNice(nice: number, proc = '/proc/self'): boolean {
  try {
    const status = readFileSync(`${proc}/status`, 'utf8');
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
    if (capEff !== undefined && (BigInt(`0x${capEff}`) >> BigInt(CAP_SYS_NICE)) & 1n) return true;
    const limits = readFileSync(`${proc}/limits`, 'utf8');
    const soft = /^Max nice priority\s+(\S+)/m.exec(limits)?.[1];
    if (soft === undefined) return false;
    return soft === 'unlimited' || Number(soft) >= 20 - nice;
  } catch {
    return false;
  }
}

/** This process's nice value. */
export function ownNice(): number {
  return getPriority(0);
}

/**
 * Set a process's nice value, if it can be (a process gone meanwhile, or not
 * permitted: left as it is); `pid` 0 is this process. On Linux a nice value
 * belongs to a thread: each of the process's threads is set (Node's V8 and
 * libuv threads, started niced with the process, would otherwise stay so).
 */
export function trySetNice(pid: number, nice: number): void {
  const value = Math.max(MIN_NICE, Math.min(MAX_NICE, nice));
  let threads: number[];
  try {
    threads = readdirSync(`/proc/${pid === 0 ? process.pid : pid}/task`).map(Number);
  } catch {
    threads = [pid];
  }
  for (const tid of threads) {
    try {
      setPriority(tid, value);
    } catch {
      // gone meanwhile, or not permitted: nothing to undo
    }
  }
}
