/** What /proc says about a process, read from outside so nothing runs inside it. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
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
