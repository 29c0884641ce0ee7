/**
 * The serving generation's stall during an upgrade: apps/ecdysis-stall.mjs (the
 * HTTP app with a ballast) measures its own event-loop delay, the max from its
 * ready() to the trigger and the max from the trigger to the end of its drain.
 * For each ballast size, RUNS times each way of starting the next generation
 * (ECDYSIS_SPAWN=node: child_process.spawn; native: the addon's posix_spawn),
 * interleaved: a fresh generation 0 holding the ballast, upgraded once by
 * SIGHUP 1.5 s after it serves; its own figures. No load: the loop is otherwise
 * idle, so what is measured is the library's work on it (and the new
 * generation's start-up competing for the 2 cores).
 *
 *   node --import tsx bench/src/upgrade-stall.ts [--sizes=50,800] [--runs=3]
 *
 * Standalone (not part of `npm run bench`): it needs ../dist (`npm install` at the root).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const app = fileURLToPath(new URL('../apps/ecdysis-stall.mjs', import.meta.url));
const arg = (name: string, fallback: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;

interface LogRecord {
  t: number;
  pid: number;
  event: string;
  generation?: number;
  outsideMs?: number;
  windowMs?: number;
  windowLengthMs?: number;
  rssMiB?: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function read(log: string): LogRecord[] {
  try {
    return readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as LogRecord);
  } catch {
    return [];
  }
}

async function waitFor<T>(what: string, find: () => T | undefined, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = find();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A fresh generation 0 with the ballast, one upgrade by SIGHUP 1.5 s after it serves: generation 0's figures. */
async function run(mib: number, mode: 'node' | 'native'): Promise<LogRecord> {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-stall-'));
  const log = join(dir, 'log.jsonl');
  const env = { ...process.env, BENCH_LOG: log, BALLAST_MIB: String(mib), ...(mode === 'node' ? { ECDYSIS_SPAWN: 'node' } : {}) };
  if (mode === 'native') delete env.ECDYSIS_SPAWN;
  const first = spawn(process.execPath, ['--max-old-space-size=8192', app], { env, stdio: 'inherit' });
  let servingPid = first.pid!;
  try {
    await waitFor('generation 0', () => read(log).find((r) => r.event === 'serving' && r.generation === 0));
    await sleep(1_500);
    process.kill(servingPid, 'SIGHUP');
    servingPid = (await waitFor('generation 1', () => read(log).find((r) => r.event === 'serving' && r.generation === 1))).pid;
    return await waitFor('the stall of generation 0', () => read(log).find((r) => r.event === 'stall' && r.generation === 0));
  } finally {
    try {
      process.kill(servingPid, 'SIGTERM');
    } catch {
      // gone
    }
    await waitFor('the last generation to exit', () => read(log).find((r) => r.event === 'exit' && r.pid === servingPid), 20_000).catch(() => undefined);
    first.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

const sizes = arg('sizes', '50,800').split(',').map(Number);
const runs = Number(arg('runs', '3'));
const rows = [
  '| ballast | start | RSS | loop delay max outside, ms (each run) | trigger → drained, ms (each) | max over trigger → drained, ms (each) |',
  '| ---: | --- | ---: | --- | --- | --- |',
];
for (const mib of sizes) {
  const stalls: Record<'node' | 'native', LogRecord[]> = { node: [], native: [] };
  // Interleaved: the machine's state drifts alike for both.
  for (let i = 0; i < runs; i++) for (const mode of ['node', 'native'] as const) stalls[mode].push(await run(mib, mode));
  for (const mode of ['node', 'native'] as const) {
    const list = (key: keyof LogRecord) => stalls[mode].map((s) => Number(s[key]).toFixed(1)).join(', ');
    rows.push(`| ${mib} MiB | ${mode === 'node' ? 'child_process.spawn' : 'addon posix_spawn'} | ${stalls[mode][0]?.rssMiB ?? '?'} MiB | ${list('outsideMs')} | ${list('windowLengthMs')} | ${list('windowMs')} |`);
  }
}
process.stdout.write(`${rows.join('\n')}\n`);
