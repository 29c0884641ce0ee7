/**
 * Using every core (option `workers`): throughput of a CPU-bound handler
 * (BUSY_MS of computation per request) through one ecdysis process and
 * through `workers: 2`, interleaved rounds, the load generator sharing the
 * same 2 cores (as a service on a 2-core machine would); the primary's own
 * CPU at steady state; and memory: the primary's RSS, and the peak of all the
 * service's processes together during an upgrade.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { APPS, launchApp } from './apps.ts';
import { stopChild, terminatePid } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { cpuTimeNs, rssMiB } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';
import { requestsPerSecond } from './load/throughput.ts';

export interface MulticoreOptions {
  rounds: number;
  durationS: number;
  connections: number;
  busyMs: number;
  workers: number;
  tmpDir: string;
  /**
   * The rounds begin once both services have served this long: steady state. A
   * Node process's V8 runs two major GCs (its memory reducer) about 8 s after
   * start; in a primary, which has nothing else to do, they are all its CPU
   * (--trace-gc: 2 to 7 ms each, then nothing), and a 3 s round that met them
   * read 0.9 to 1.2% of a core against 0.04 to 0.08% for every other round.
   */
  minAgeMs: number;
}

export interface MulticoreResult {
  options: Omit<MulticoreOptions, 'tmpDir'>;
  /** Requests per second, one process. */
  single: Spread;
  /** Requests per second, `workers`. */
  group: Spread;
  /** group / single, per round. */
  ratio: Spread;
  /** The primary's CPU time over wall time while its workers served the load (fraction of one core). */
  primaryCpu: Spread;
  /** The primary's RSS, idle, MiB. */
  primaryRssMiB: number;
  /** One worker's RSS, idle, MiB. */
  workerRssMiB: number;
  /** A single-process service's RSS, idle, MiB. */
  singleRssMiB: number;
  /** Every process of the service together (primaries and workers of both generations) at their peak during an upgrade, MiB. */
  upgradePeakMiB: number;
  /** The same at steady state, MiB. */
  steadyTotalMiB: number;
}

interface Service {
  primary: number;
  /** Date.now() when it was serving. */
  servingAt: number;
  stop(): Promise<void>;
  port: number;
  log: LifecycleLog;
}

async function startService(tmpDir: string, name: string, env: Record<string, string>, expectServing: number): Promise<Service> {
  const port = await freePort();
  const log = new LifecycleLog(join(tmpDir, `${name}.jsonl`));
  const child = launchApp({ script: APPS.ecdysis, log, env: { ...env, PORT: String(port), BENCH_EVENTS: '0' } });
  await log.waitForServing(expectServing, 30_000);
  const primaryPid = child.pid!;
  return {
    primary: primaryPid,
    servingAt: Date.now(),
    port,
    log,
    stop: async () => {
      const serving = log.records().filter((r) => r.event === 'primary').at(-1)?.pid;
      if (serving && serving !== primaryPid) await terminatePid(serving);
      await stopChild(child);
    },
  };
}

/** The pids of a process tree (this pid and its descendants), from /proc. */
function tree(root: number): number[] {
  const parent = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      parent.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone
    }
  }
  const found = [root];
  for (let i = 0; i < found.length; i++) for (const [pid, ppid] of parent) if (ppid === found[i]) found.push(pid);
  return found;
}

function totalRss(pids: number[]): number {
  let sum = 0;
  for (const pid of pids) {
    try {
      const rss = rssMiB(pid);
      // A process exiting (a zombie) has no resident set any more.
      if (Number.isFinite(rss)) sum += rss;
    } catch {
      // exited meanwhile
    }
  }
  return sum;
}

export async function measureMulticore(options: MulticoreOptions, progress: (message: string) => void): Promise<MulticoreResult> {
  const single: number[] = [];
  const group: number[] = [];
  const ratio: number[] = [];
  const primaryCpu: number[] = [];
  const env = { BUSY_MS: String(options.busyMs) };
  const one = await startService(options.tmpDir, 'single', env, 1);
  const many = await startService(options.tmpDir, 'workers', { ...env, WORKERS: String(options.workers) }, options.workers);
  try {
    // `many` started after `one`: the later of the two decides.
    await sleep(Math.max(0, Math.max(one.servingAt, many.servingAt) + options.minAgeMs - Date.now()));
    for (let round = 0; round < options.rounds; round++) {
      progress(`  multi-core round ${round + 1} of ${options.rounds}`);
      // Interleaved, in a rotated order.
      const order = round % 2 === 0 ? ([one, many] as const) : ([many, one] as const);
      let s = 0;
      let g = 0;
      for (const service of order) {
        const cpuBefore = cpuTimeNs(service.primary) / 1e6;
        const startedAt = performance.now();
        const result = await requestsPerSecond({ port: service.port, connections: options.connections, durationS: options.durationS });
        const wall = performance.now() - startedAt;
        if (service === one) s = result.perSecond;
        else {
          g = result.perSecond;
          primaryCpu.push((cpuTimeNs(service.primary) / 1e6 - cpuBefore) / wall);
        }
      }
      single.push(s);
      group.push(g);
      ratio.push(g / s);
    }
    const primaryRssMiB = rssMiB(many.primary);
    const workerPids = tree(many.primary).filter((pid) => pid !== many.primary);
    const workerRssMiB = workerPids.length ? totalRss(workerPids) / workerPids.length : 0;
    const singleRssMiB = rssMiB(one.primary);
    const steadyTotalMiB = totalRss(tree(many.primary));
    // An upgrade of the group, sampled every 10 ms from the trigger until the old primary is gone.
    progress('  multi-core: memory of every process during an upgrade');
    let peak = 0;
    const oldPrimary = many.primary;
    process.kill(oldPrimary, 'SIGHUP');
    const deadline = performance.now() + 30_000;
    let seen = new Set<number>();
    while (performance.now() < deadline) {
      // The new primary is a child of the old one until the old one exits.
      const pids = tree(oldPrimary);
      for (const pid of pids) seen.add(pid);
      seen = new Set([...seen].filter((pid) => { try { process.kill(pid, 0); return true; } catch { return false; } }));
      peak = Math.max(peak, totalRss([...seen]));
      const alive = (() => { try { process.kill(oldPrimary, 0); return true; } catch { return false; } })();
      if (!alive) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    return {
      options: { rounds: options.rounds, durationS: options.durationS, connections: options.connections, busyMs: options.busyMs, workers: options.workers, minAgeMs: options.minAgeMs },
      single: spread(single),
      group: spread(group),
      ratio: spread(ratio),
      primaryCpu: spread(primaryCpu),
      primaryRssMiB,
      workerRssMiB,
      singleRssMiB,
      upgradePeakMiB: peak,
      steadyTotalMiB,
    };
  } finally {
    await one.stop();
    await many.stop();
  }
}
