/** What /proc says about a process, read from outside so nothing runs inside it. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { statFields } from '../../../examples/lib/processes.ts';

const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** Resident set size, MiB (VmRSS). */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) / 1024;
}

/** CPU time used so far (user + system), ms, at the kernel's tick resolution. */
export function cpuTimeMs(pid: number): number {
  const fields = statFields(pid);
  if (!fields) throw new Error(`pid ${pid} is gone`);
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
}

/**
 * Time spent on a CPU so far by every thread of the process (the main thread,
 * V8's and libuv's helpers), ns: the first field of each
 * /proc/<pid>/task/<tid>/schedstat, which the scheduler keeps in ns (where
 * /proc/<pid>/stat counts 10 ms ticks). A thread that exits takes its share with
 * it, so measure between moments when the process's threads do not change (a
 * Node process starts its helpers at start-up). Falls back to the ticks of
 * cpuTimeMs() when the kernel has no schedstat.
 */
export function cpuTimeNs(pid: number): number {
  let total = 0;
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    throw new Error(`pid ${pid} is gone`);
  }
  for (const tid of tids) {
    let line: string;
    try {
      line = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        if (tid === String(pid)) return cpuTimeMs(pid) * 1e6;
        continue; // a thread that has just exited
      }
      throw err;
    }
    total += Number(line.slice(0, line.indexOf(' ')));
  }
  return total;
}

/** Fraction of all CPUs busy over `ms` (from /proc/stat): what else is running on the machine. */
export async function machineBusy(ms: number): Promise<number> {
  const read = () => {
    const [, ...values] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/);
    const ticks = values.map(Number);
    const idle = ticks[3]! + (ticks[4] ?? 0);
    return { idle, total: ticks.reduce((a, b) => a + b, 0) };
  };
  const before = read();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = read();
  const total = after.total - before.total;
  return total > 0 ? 1 - (after.idle - before.idle) / total : 0;
}

/** Resident set size now (VmRSS) and its peak (VmHWM), MiB; undefined once the process is gone (or a zombie). */
export function memoryMiB(pid: number): { rss: number; peak: number } | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const rss = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  const peak = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
  if (rss === undefined || peak === undefined) return undefined;
  return { rss: Number(rss) / 1024, peak: Number(peak) / 1024 };
}

/**
 * Reset a process's peak RSS (VmHWM) to its current RSS, from outside: writes
 * "5" to /proc/<pid>/clear_refs (Linux 4.0 on; the process's own user may).
 * False when the kernel refused.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}
