/**
 * `npm run demo`: serve real traffic through real upgrades and show that no
 * request failed.
 *
 * Starts examples/http-server.ts, drives load at it from a separate process
 * (keep-alive clients and new-connection-per-request clients that never
 * retry), upgrades it N times with SIGHUP, stops it with SIGTERM, and prints
 * what happened. Exits 1 if any request failed.
 *
 *   npm run demo                      10 upgrades
 *   npm run demo -- --upgrades 25     more
 *   npm run demo -- --workers 2       a primary and 2 worker processes, upgraded as one
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { FAILURE_KINDS, latencySplit, percentile, totalFailures, type LoadReport } from './lib/http-load.ts';
import { onLines } from './lib/lines.ts';
import { startLoadProcess } from './lib/load-runner.ts';
import { isRunning, waitForExit } from './lib/processes.ts';
import { freePort } from './lib/free-port.ts';

const { values } = parseArgs({
  options: {
    upgrades: { type: 'string', default: '10' },
    'keep-alive-clients': { type: 'string', default: '6' },
    'fresh-clients': { type: 'string', default: '3' },
    pause: { type: 'string', default: '500' },
    workers: { type: 'string' },
  },
});
const workers = values.workers === undefined ? undefined : Number(values.workers);
if (workers !== undefined && (!Number.isInteger(workers) || workers < 1 || workers > 64)) throw new Error('--workers must be an integer from 1 to 64');
const upgrades = Number(values.upgrades);
const pauseMs = Number(values.pause);
if (!Number.isInteger(upgrades) || upgrades < 1 || upgrades > 200) throw new Error('--upgrades must be an integer from 1 to 200');

interface LifecycleEvent {
  type: string;
  /** examples/lib/lifecycle-log.ts: 'single', 'primary' or 'worker'. */
  role?: string;
  pid: number;
  generation: number;
  childPid?: number;
  time: number;
  result?: { connections: number; completed: number; closedIdle: number; destroyed: number; elapsedMs: number };
}

interface UpgradeTiming {
  oldPid: number;
  newPid: number;
  triggeredAt: number;
  readyMs: number;
  /** Until the new generation heard that the old one's drain is over (then it may upgrade). */
  oldDrainedMs: number;
  drained?: NonNullable<LifecycleEvent['result']>;
}

const service = fileURLToPath(new URL('./http-server.ts', import.meta.url));
const workdir = mkdtempSync(join(tmpdir(), 'ecdysis-demo-'));
const started = Date.now();
const pids = new Set<number>();
const events: LifecycleEvent[] = [];
const waiters: { match: (e: LifecycleEvent) => boolean; resolve: (e: LifecycleEvent) => void }[] = [];

function waitForEvent(match: (e: LifecycleEvent) => boolean, timeoutMs: number, what: string): Promise<LifecycleEvent> {
  const seen = events.find(match);
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    waiters.push({ match, resolve: (e) => (clearTimeout(timer), resolve(e)) });
  });
}

const port = await freePort();
const root = spawn(process.execPath, ['--import', 'tsx', service], {
  env: { ...process.env, PORT: String(port), HOST: '127.0.0.1', EVENTS: 'json', PID_FILE: join(workdir, 'http.pid'), DRAIN_TIMEOUT: '10000', ...(workers ? { WORKERS: String(workers) } : {}) },
  stdio: ['ignore', 'pipe', 'inherit'],
});
pids.add(root.pid!);
onLines(root.stdout, (line) => {
  const event = JSON.parse(line) as LifecycleEvent;
  events.push(event);
  pids.add(event.pid);
  for (const w of [...waiters]) if (w.match(event)) waiters.splice(waiters.indexOf(w), 1), w.resolve(event);
});

let load: ReturnType<typeof startLoadProcess> | undefined;
const timings: UpgradeTiming[] = [];
let report: LoadReport | undefined;
let failed = false;
try {
  // With workers: the primary's (its workers serve once it is ready).
  let current = await waitForEvent((e) => e.type === 'ready' && e.generation === 0 && e.role !== 'worker', 30_000, 'generation 0 ready');
  load = startLoadProcess({ port, keepAliveClients: Number(values['keep-alive-clients']), freshClients: Number(values['fresh-clients']), durationMs: 120_000 });
  pids.add(load.pid);
  await load.started;
  await new Promise((r) => setTimeout(r, 1_000));
  for (let i = 0; i < upgrades; i++) {
    const triggeredAt = Date.now();
    const t0 = performance.now();
    process.kill(current.pid, 'SIGHUP');
    const ready = await waitForEvent((e) => e.type === 'child-ready' && e.pid === current.pid, 60_000, `upgrade ${i + 1}`);
    const readyMs = performance.now() - t0;
    // The old generation drains; then it stays in its probation (5 s by default), idle and ready
    // to take the service back, until the new one upgrades or stops: that never holds us back.
    current = await waitForEvent((e) => e.type === 'parent-drained' && e.pid === ready.childPid, 30_000, 'parent-drained');
    timings.push({ oldPid: ready.pid, newPid: ready.childPid!, triggeredAt, readyMs, oldDrainedMs: performance.now() - t0 });
    await new Promise((r) => setTimeout(r, pauseMs));
  }
  report = await load.stop();
  process.kill(current.pid, 'SIGTERM');
  await waitForExit(current.pid, 30_000);
  for (const timing of timings) {
    timing.drained = (await waitForEvent((e) => e.type === 'drained' && e.pid === timing.oldPid, 30_000, `generation of pid ${timing.oldPid} drained`)).result!;
    await waitForExit(timing.oldPid, 30_000);
  }
} catch (err) {
  failed = true;
  process.stderr.write(`demo: ${(err as Error).message}\n`);
} finally {
  load?.kill();
  for (const pid of pids) if (pid !== process.pid && isRunning(pid)) process.kill(pid, 'SIGKILL');
  rmSync(workdir, { recursive: true, force: true });
}

if (report) printReport(report);
const failures = report ? totalFailures(report) : -1;
process.exitCode = failed || failures !== 0 ? 1 : 0;

function printReport(report: LoadReport): void {
  const ms = (n: number) => (Number.isFinite(n) ? `${n.toFixed(n < 10 ? 2 : 0)} ms` : '-');
  const pad = (s: string | number, n: number) => String(s).padEnd(n);
  const lines: string[] = [];
  lines.push('', `ecdysis demo: node:http service on 127.0.0.1:${port}${workers ? ` (a primary and ${workers} workers)` : ''}, ${timings.length} upgrades under load`);
  lines.push(`load: ${values['keep-alive-clients']} keep-alive clients + ${values['fresh-clients']} new-connection-per-request clients, no retries, separate process`, '');
  lines.push(`${pad('upgrade', 9)}${pad('old pid -> new pid', 22)}${pad('trigger->ready', 16)}${pad('trigger->old drained', 22)}old generation's drain`);
  timings.forEach((u, i) => {
    const d = u.drained;
    const drain = d ? `${d.connections} conns in ${ms(d.elapsedMs)}: ${d.completed} ended, ${d.closedIdle} idle closed, ${d.destroyed} destroyed` : '-';
    lines.push(`${pad(i + 1, 9)}${pad(`${u.oldPid} -> ${u.newPid}`, 22)}${pad(ms(u.readyMs), 16)}${pad(ms(u.oldDrainedMs), 22)}${drain}`);
  });
  const windows: [number, number][] = timings.map((u) => [u.triggeredAt, u.triggeredAt + u.oldDrainedMs]);
  const { inside, outside } = latencySplit(report.samples, windows);
  const failures = totalFailures(report);
  lines.push('');
  lines.push(`requests: ${report.requests} sent, ${report.ok} ok, ${failures} failed (${FAILURE_KINDS.map((k) => `${k} ${report.failures[k]}`).join(', ')})`);
  lines.push(`connections opened by clients: ${report.connectionsOpened}; generations that answered: ${report.generations.length}`);
  if (workers) {
    // Which worker of each generation answered how many requests.
    const byGeneration = new Map<string, string[]>();
    for (const [key, count] of Object.entries(report.workers ?? {}).sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))) {
      const [generation, worker] = key.split('/');
      byGeneration.set(generation!, [...(byGeneration.get(generation!) ?? []), `worker ${worker}: ${count}`]);
    }
    lines.push(`${workers} workers per generation; answers by worker:`);
    for (const [generation, counts] of byGeneration) lines.push(`  generation ${generation.padEnd(3)} ${counts.join(', ')}`);
    const missing = timings.length + 1 - byGeneration.size;
    if (missing > 0) lines.push(`  (${missing} generation${missing === 1 ? '' : 's'} answered no request)`);
  }
  lines.push('');
  lines.push(`${pad('latency', 18)}${pad('requests', 10)}${pad('p50', 11)}${pad('p99', 11)}max`);
  for (const [name, list] of [['inside upgrades', inside], ['outside upgrades', outside]] as const) {
    lines.push(`${pad(name, 18)}${pad(list.length, 10)}${pad(ms(percentile(list, 50)), 11)}${pad(ms(percentile(list, 99)), 11)}${ms(list[list.length - 1] ?? NaN)}`);
  }
  lines.push('');
  lines.push(failures === 0 && !failed ? `PASS: no request failed across ${timings.length} upgrades (${((Date.now() - started) / 1000).toFixed(1)} s)` : `FAIL: ${failures} requests failed`);
  if (failures > 0) lines.push(...report.errors.slice(0, 10));
  process.stdout.write(`${lines.join('\n')}\n`);
}
