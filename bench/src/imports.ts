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
import { spread, type Spread } from './lib/stats.ts';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

export const IMPORTS = [
  { id: 'bare', label: '`node` (no import)', code: '' },
  { id: 'rxjs', label: "`node` + `import 'rxjs'`", code: "await import('rxjs');" },
  { id: 'observable', label: "`node` + `import 'rxjs/internal/Observable'` (what `events()` and `connections()` load)", code: "await import('rxjs/internal/Observable');" },
  { id: 'net', label: "`node` + `import 'node:net'` (which every network service loads)", code: "await import('node:net');" },
  { id: 'ecdysis', label: '`node` + `import ecdysis`', code: `await import(${JSON.stringify(new URL('dist/index.js', `file://${repoRoot}/`).href)});` },
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
}

/** Spawn-to-exit time and idle RSS of each IMPORTS entry, `runs` times each, interleaved. */
export async function measureImports(runs: number, idleMs: number): Promise<ImportCost[]> {
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
  return IMPORTS.map((i) => ({ id: i.id, label: i.label, startupMs: spread(startup.get(i.id)!), startupRuns: startup.get(i.id)!, idleMiB: spread(rss.get(i.id)!) }));
}
