/** What /proc says about a process, read from outside so nothing runs inside it. */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync, writeFileSync } from 'node:fs';
import { statFields } from '../../../examples/lib/processes.ts';

const ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** Resident set size, MiB (VmRSS). */
export function rssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]) / 1024;
}

/** Where a process's resident memory is, by what is mapped there (KiB): see rssByMapping(). */
export type MappingKind = 'node' | 'anonymous' | 'malloc' | 'addon' | 'libraries' | 'other';

/**
 * Resident memory by mapping, KiB, from /proc/<pid>/smaps: the node executable
 * (its code and read-only data, pages of the page cache shared with every other
 * node process but counted in each one's RSS), anonymous memory (V8's heap,
 * thread stacks, other private allocations), malloc's heap, native addons
 * (*.node) and shared libraries.
 */
export function rssByMapping(pid: number): Record<MappingKind, number> {
  const out: Record<MappingKind, number> = { node: 0, anonymous: 0, malloc: 0, addon: 0, libraries: 0, other: 0 };
  let exe = '';
  try {
    exe = readlinkSync(`/proc/${pid}/exe`);
  } catch {
    // gone: the smaps read below says so
  }
  let kind: MappingKind = 'other';
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      const name = header[1]!;
      kind = name === exe ? 'node' : name === '' ? 'anonymous' : name === '[heap]' ? 'malloc' : name.endsWith('.node') ? 'addon' : /\.so(\.|$)/.test(name) ? 'libraries' : 'other';
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) out[kind] += Number(rss[1]);
  }
  return out;
}

/**
 * Minor page faults so far (/proc/<pid>/stat minflt): each page of memory the
 * process touched for the first time, or a file's pages mapped in around one it
 * read. On a virtual machine each one costs microseconds of the process's
 * start-up.
 */
export function minorFaults(pid: number): number {
  const fields = statFields(pid);
  if (!fields) throw new Error(`pid ${pid} is gone`);
  return Number(fields[7]);
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
