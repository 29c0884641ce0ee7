/**
 * What loading a library costs a fresh Node process: start-up time (spawn to
 * exit) and idle RSS of `node` importing nothing, all of rxjs (for comparison:
 * ecdysis loads only `rxjs/internal/Observable`, and only once an Observable
 * is asked for) and ecdysis itself.
 * Every generation of an ecdysis service pays the ecdysis cost on start, so it
 * is part of the upgrade latency and of the memory figures.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { exited, spawnTracked, stopChild } from './lib/children.ts';
import { rssMiB } from './lib/proc.ts';
import { percentile, sorted, spread, type Spread } from './lib/stats.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
const fileUrl = (path: string) => JSON.stringify(new URL(path, `file://${repoRoot}/`).href);
/** What a service has loaded before it imports ecdysis: node:http (and with it net), and a file of its own. */
const SERVICE_BEFORE = `await import('node:http'); await import(${fileUrl('bench/apps/empty.mjs')});`;

export const IMPORTS = [
  { id: 'bare', label: '`node` (no import)', code: '' },
  { id: 'rxjs', label: "`node` + `import 'rxjs'`", code: "await import('rxjs');" },
  { id: 'observable', label: "`node` + `import 'rxjs/internal/Observable'` (what `events()` and `connections()` load)", code: "await import('rxjs/internal/Observable');" },
  { id: 'net', label: "`node` + `import 'node:net'` (which every network service loads)", code: "await import('node:net');" },
  { id: 'file', label: '`node` + `import` of an empty file (what importing any file costs: a service\'s own entry has paid it)', code: `await import(${fileUrl('bench/apps/empty.mjs')});` },
  { id: 'ecdysis', label: '`node` + `import ecdysis`', code: `await import(${fileUrl('dist/index.js')});` },
] as const;

export interface ImportCost {
  id: string;
  label: string;
  /** Spawn to exit, ms. */
  startupMs: Spread;
  /** Spawn to exit of each run, in run order (runs interleave the entries, so run i of two entries is a pair). */
  startupRuns?: number[];
  /** RSS once loaded and idle, MiB. */
  idleMiB: Spread;
  /** The goal's figure (ecdysis only): what importing adds to a bare `node`, over pairs run next to each other. */
  paired?: PairedCost;
  /**
   * What importing ecdysis adds to a service (ecdysis only): pairs of `node`
   * importing node:http and a file of its own, then ecdysis or nothing more.
   */
  pairedOverService?: PairedCost;
}

/**
 * `node` + import against bare `node`, in pairs run back to back, the order
 * alternating (ABBA) so that neither side always runs first; each pair's
 * difference, so that what the machine's other load does to a moment cancels
 * out within its pair. Wall: spawn to exit. CPU: the child's user + system
 * time at exit (process.cpuUsage(), every thread), which does not grow when
 * the child waits for a core, so it is the steadier of the two on a shared
 * machine.
 */
export interface PairedCost {
  pairs: number;
  wallMs: PairedSpread;
  cpuMs: PairedSpread;
  /** Each pair's differences, in run order. */
  wallRuns: number[];
  cpuRuns: number[];
}

export interface PairedSpread extends Spread {
  /** Quartiles of the differences. */
  q1: number;
  q3: number;
}

function pairedSpread(values: number[]): PairedSpread {
  const s = sorted(values);
  return { ...spread(values), q1: percentile(s, 25), q3: percentile(s, 75) };
}

/** Reports the child's CPU time on stdout as it exits; costs both sides of a pair the same. */
const REPORT_CPU = "process.on('exit', () => { const u = process.cpuUsage(); process.stdout.write(String((u.user + u.system) / 1000)); });";

function timedRun(code: string): Promise<{ wallMs: number; cpuMs: number }> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['--input-type=module', '-e', `${REPORT_CPU} ${code}`], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'ignore'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      const wallMs = performance.now() - t0;
      const cpuMs = Number(out);
      if (code !== 0 || !Number.isFinite(cpuMs)) return reject(new Error(`import run exited with ${code}, printed ${JSON.stringify(out)}`));
      resolve({ wallMs, cpuMs });
    });
  });
}

/** `pairs` pairs of `node` + `base` and `node` + `base` + `code` (see PairedCost); `base` '' is a bare `node`. */
export async function measurePaired(code: string, pairs: number, base = ''): Promise<PairedCost> {
  const wallRuns: number[] = [];
  const cpuRuns: number[] = [];
  for (let i = 0; i < pairs; i++) {
    const bareFirst = i % 4 === 0 || i % 4 === 3;
    const first = await timedRun(bareFirst ? base : `${base} ${code}`);
    const second = await timedRun(bareFirst ? `${base} ${code}` : base);
    const [bare, loaded] = bareFirst ? [first, second] : [second, first];
    wallRuns.push(loaded.wallMs - bare.wallMs);
    cpuRuns.push(loaded.cpuMs - bare.cpuMs);
  }
  return { pairs, wallMs: pairedSpread(wallRuns), cpuMs: pairedSpread(cpuRuns), wallRuns, cpuRuns };
}

/**
 * Spawn-to-exit time and idle RSS of each IMPORTS entry, `runs` times each,
 * interleaved; then `pairs` pairs of bare `node` and `node` + ecdysis for the goal.
 */
export async function measureImports(runs: number, idleMs: number, pairs: number): Promise<ImportCost[]> {
  const startup = new Map<string, number[]>(IMPORTS.map((i) => [i.id, []]));
  const rss = new Map<string, number[]>(IMPORTS.map((i) => [i.id, []]));
  for (let run = 0; run < runs; run++) {
    for (const entry of IMPORTS) {
      const t0 = performance.now();
      // cwd: the repository root, whose node_modules has the rxjs that ecdysis uses.
      await exited(spawn(process.execPath, ['--input-type=module', '-e', entry.code || '0'], { cwd: repoRoot, stdio: 'ignore' }));
      startup.get(entry.id)!.push(performance.now() - t0);
    }
  }
  for (let run = 0; run < Math.min(runs, 3); run++) {
    for (const entry of IMPORTS) {
      const idle = spawnTracked(process.execPath, ['--input-type=module', '-e', `${entry.code} setInterval(() => {}, 60_000);`], { cwd: repoRoot });
      await sleep(idleMs);
      rss.get(entry.id)!.push(rssMiB(idle.pid!));
      await stopChild(idle);
    }
  }
  const ecdysis = IMPORTS.find((i) => i.id === 'ecdysis')!;
  const paired = await measurePaired(ecdysis.code, pairs);
  const pairedOverService = await measurePaired(ecdysis.code, pairs, SERVICE_BEFORE);
  return IMPORTS.map((i) => ({
    id: i.id,
    label: i.label,
    startupMs: spread(startup.get(i.id)!),
    startupRuns: startup.get(i.id)!,
    idleMiB: spread(rss.get(i.id)!),
    ...(i.id === 'ecdysis' ? { paired, pairedOverService } : {}),
  }));
}
