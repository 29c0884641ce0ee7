/**
 * How an ecdysis upgrade's latency grows: trigger (SIGHUP) to child-ready and
 * to the old generation's exit, for an app with 1, 100 and 1,000 listeners
 * (each listener is one more fd handed over and one more socket to adopt), and
 * with 0, 1,000 and 10,000 open keep-alive connections to drain; next to the
 * floor, a bare `node -e 0` start-up on the same machine; and the 1-listener
 * app upgraded `sequence` times in a row (every upgrade's figures kept, with the
 * fds and RSS of each new generation), to show whether the hundredth upgrade
 * costs what the first did.
 *
 * The connection runs drain with idleTimeout 0 (KEEP_ALIVE_MS keeps the
 * connections open until then), so that they measure the cost of draining N
 * connections and not the idle-grace policy (by default the old generation
 * closes an idle keep-alive connection only once it has been idle for the
 * server's keepAliveTimeout, 5 s, not to race a client's next request).
 */
import type { ChildProcess } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { APPS, launchApp } from './apps.ts';
import { stopChild, terminatePid } from './lib/children.ts';
import { LifecycleLog, phaseSpreads, startPhases, type LifecycleRecord, type StartPhases } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { rssMiB } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';
import { openIdleConnections } from './load/idle-connections.ts';

export interface GrowthOptions {
  listenerCounts: number[];
  connectionCounts: number[];
  upgrades: number;
  /** Upgrades in a row of the 1-listener app, to see whether each costs the same (0: none). */
  sequence: number;
  /** Measure the plain app's spawn → serving (false: only its SIGTERM → exit, for the drain). Default true. */
  plainStarts?: boolean;
  tmpDir: string;
}

export interface GrowthRow {
  /** 'listeners' or 'connections'. */
  dimension: 'listeners' | 'connections';
  count: number;
  /** SIGHUP to the old generation's child-ready event, ms. */
  toChildReady: Spread;
  /** SIGHUP to the old generation's exit, ms. */
  toOldExit: Spread;
  /** drain() as the old generation reported it (last upgrade). */
  drain?: { connections: number; completed: number; closedIdle: number; destroyed: number; elapsedMs: number };
  /** Where each new generation's start went (idle machine). */
  startPhases?: Record<keyof StartPhases, Spread>;
  /** Connections the helper had open / saw closed by the server (connection rows). */
  opened?: number;
  closedByServer?: number;
}

/** One app upgraded many times in a row: every upgrade's figures, in order. */
export interface GrowthSequence {
  toChildReady: number[];
  toOldExit: number[];
  /** Open fds of each new generation once its parent has exited (/proc/<pid>/fd). */
  fds: number[];
  /** RSS of each new generation once its parent has exited, MiB. */
  rssMiB: number[];
}

/**
 * The floor of the drain at scale: the plain node:http app (no ecdysis) with N
 * idle keep-alive connections, SIGTERM → its exit (server.close(), which closes
 * idle connections since Node 19, then process.exit()).
 */
export interface PlainStopRow {
  connections: number;
  toExit: Spread;
}

export interface GrowthResult {
  rows: GrowthRow[];
  sequence?: GrowthSequence;
  plainStop?: PlainStopRow[];
  /** The plain node:http app (no ecdysis): spawn → serving (listening), ms: the application's own start, the floor of trigger → child ready. */
  plainStart?: Spread;
}

export async function measureGrowth(options: GrowthOptions): Promise<GrowthResult> {
  const rows: GrowthRow[] = [];
  for (const count of options.listenerCounts) {
    rows.push(await upgradeSeries(options, 'listeners', count, { LISTENERS: String(count) }));
  }
  for (const count of options.connectionCounts) {
    rows.push(await upgradeSeries(options, 'connections', count, { KEEP_ALIVE_MS: '600000', DRAIN_IDLE_MS: '0' }));
  }
  const plainStart = options.plainStarts === false ? undefined : spread(await plainStarts(options));
  const plainStop: PlainStopRow[] = [];
  for (const count of [0, Math.max(...options.connectionCounts)]) plainStop.push({ connections: count, toExit: spread(await plainStops(options, count)) });
  if (options.sequence === 0) return { rows, plainStop, ...(plainStart ? { plainStart } : {}) };
  const sequence: GrowthSequence = { toChildReady: [], toOldExit: [], fds: [], rssMiB: [] };
  await upgradeSeries({ ...options, upgrades: options.sequence }, 'listeners', 1, {}, sequence);
  return { rows, sequence, plainStop, ...(plainStart ? { plainStart } : {}) };
}

/** Spawn → serving of the plain app, `options.upgrades` × 2 times. */
function plainStarts(options: GrowthOptions): Promise<number[]> {
  return plainAppRuns(options, 'start', {}, options.upgrades * 2, async (app, _port, log, launchedAt) => {
    const serving = (await log.recordsAsync()).find((r) => r.pid === app.pid && r.event === 'serving')!;
    return serving.t - launchedAt;
  });
}

/** SIGTERM → exit of the plain app holding `count` idle keep-alive connections, `options.upgrades` times. */
function plainStops(options: GrowthOptions, count: number): Promise<number[]> {
  return plainAppRuns(options, String(count), { KEEP_ALIVE_MS: '600000' }, options.upgrades, async (app, port, log) => {
    const idle = count > 0 ? openIdleConnections({ port, count, concurrency: 200 }) : undefined;
    if (idle) await idle.opened;
    const triggeredAt = Date.now();
    process.kill(app.pid!, 'SIGTERM');
    const gone = await log.waitForHandover(triggeredAt, [app.pid!], 0, 60_000);
    if (idle) await idle.close();
    return gone.oldGoneAt - triggeredAt;
  });
}

/** `times` fresh plain apps, one after the other: `measure` gets each once it serves and returns its figure. */
async function plainAppRuns(
  options: GrowthOptions,
  name: string,
  env: Record<string, string>,
  times: number,
  measure: (app: ChildProcess, port: number, log: LifecycleLog, launchedAt: number) => Promise<number>,
): Promise<number[]> {
  const log = new LifecycleLog(join(options.tmpDir, `growth-plain-${name}.jsonl`));
  const figures: number[] = [];
  try {
    for (let i = 0; i < times; i++) {
      const port = await freePort();
      const launchedAt = Date.now();
      const app = launchApp({ script: APPS.plain, log, env: { ...env, PORT: String(port) } });
      try {
        await log.waitForPid(app.pid!, 30_000);
        figures.push(await measure(app, port, log, launchedAt));
      } finally {
        await stopChild(app);
      }
    }
  } finally {
    log.killAll();
  }
  return figures;
}

async function upgradeSeries(
  options: GrowthOptions,
  dimension: GrowthRow['dimension'],
  count: number,
  env: Record<string, string>,
  sequence?: GrowthSequence,
): Promise<GrowthRow> {
  const log = new LifecycleLog(join(options.tmpDir, `growth-${dimension}-${count}${sequence ? '-sequence' : ''}.jsonl`));
  const port = await freePort();
  const first = launchApp({ script: APPS.ecdysis, log, env: { ...env, PORT: String(port) } });
  const toChildReady: number[] = [];
  const toOldExit: number[] = [];
  const allPhases: StartPhases[] = [];
  const row: GrowthRow = { dimension, count, toChildReady: spread([]), toOldExit: spread([]) };
  try {
    let [pid] = await log.waitForServing(1, 30_000);
    for (let i = 0; i < options.upgrades; i++) {
      const idle = dimension === 'connections' && count > 0 ? openIdleConnections({ port, count, concurrency: 200 }) : undefined;
      if (idle) row.opened = (await idle.opened).opened;
      const triggeredAt = Date.now();
      process.kill(pid!, 'SIGHUP');
      const handover = await log.waitForHandover(triggeredAt, [pid!], 1, 60_000);
      const records = await log.recordsAsync();
      const ready = find(records, pid!, 'child-ready');
      if (!ready) throw new Error(`generation pid ${pid} exited without a child-ready record`);
      toChildReady.push((ready.at as number) - triggeredAt);
      toOldExit.push(handover.oldGoneAt - triggeredAt);
      const phases = handover.newPids[0] === undefined ? undefined : startPhases(records, handover.newPids[0], triggeredAt);
      if (phases) allPhases.push(phases);
      const drained = find(records, pid!, 'drained');
      if (drained) row.drain = drained.result as GrowthRow['drain'];
      if (idle) row.closedByServer = (await idle.close()).closedByServer;
      pid = handover.newPids[0];
      if (sequence && pid !== undefined) {
        sequence.fds.push(readdirSync(`/proc/${pid}/fd`).length);
        sequence.rssMiB.push(rssMiB(pid));
      }
    }
    if (pid !== undefined) await terminatePid(pid);
  } finally {
    await stopChild(first);
    log.killAll();
  }
  if (sequence) {
    sequence.toChildReady.push(...toChildReady);
    sequence.toOldExit.push(...toOldExit);
  }
  return { ...row, toChildReady: spread(toChildReady), toOldExit: spread(toOldExit), ...phaseSpreads(allPhases) };
}

function find(records: LifecycleRecord[], pid: number, event: string): LifecycleRecord | undefined {
  return records.find((r) => r.pid === pid && r.event === event);
}
