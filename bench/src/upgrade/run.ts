/**
 * Upgrade under load, one strategy at a time, same app, same load: start the
 * service, start the load, then restart it `restarts` times, `settleMs` apart,
 * timing each hand-over from the apps' own lifecycle records.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { LifecycleLog, startCpuMs, startPhases, type Handover } from '../lib/lifecycle-log.ts';
import { freePort } from '../lib/net.ts';
import { startMixedLoad, type MixedLoad, type MixedLoadReport } from '../load/failure-load.ts';
import type { Strategy } from './strategy.ts';

export interface UpgradeRunOptions {
  restarts: number;
  /** Load before the first restart. */
  warmupMs: number;
  /** Load between the end of one hand-over and the next trigger (and after the last). */
  settleMs: number;
  /**
   * Trigger to trigger, at least (0: settleMs after each hand-over only). The
   * same for every strategy, so that the latency outside the upgrade windows
   * covers the same share of time just after an upgrade (a new process warming
   * up) for each: one whose old process goes at once would otherwise measure
   * its outside latency mostly there, one whose old process waits out a
   * probation mostly long after.
   */
  cycleMs?: number;
  keepAliveClients: number;
  freshClients: number;
  requestTimeoutMs: number;
  /** A hand-over that takes longer than this fails the strategy's run. */
  handoverTimeoutMs: number;
  tmpDir: string;
}

export interface StrategyRun<R = MixedLoadReport> {
  id: string;
  label: string;
  instances: number;
  handovers: Handover[];
  load: R | undefined;
  /** Set when the run could not complete; what was measured so far is kept. */
  error?: string;
}

/** A load in processes of its own: started, then stopped for its report. */
export interface RunningLoad<R> {
  started: Promise<void>;
  stop(): Promise<R>;
  kill(): void;
}

/** The HTTP/1.1 load of the main comparison. */
export function mixedLoad(options: UpgradeRunOptions): (port: number, boundMs: number) => MixedLoad {
  return (port, boundMs) =>
    startMixedLoad({ port, keepAliveClients: options.keepAliveClients, freshClients: options.freshClients, timeoutMs: options.requestTimeoutMs, durationMs: boundMs });
}

export async function runStrategy<R = MixedLoadReport>(
  definition: Strategy,
  options: UpgradeRunOptions,
  startLoad: (port: number, boundMs: number) => RunningLoad<R> = mixedLoad(options) as unknown as (port: number, boundMs: number) => RunningLoad<R>,
): Promise<StrategyRun<R>> {
  const port = await freePort();
  const tmpDir = join(options.tmpDir, definition.id);
  mkdirSync(tmpDir, { recursive: true });
  const log = new LifecycleLog(join(tmpDir, 'lifecycle.jsonl'));
  const running = definition.create({ port, log, tmpDir });
  const run: StrategyRun<R> = { id: definition.id, label: definition.label, instances: definition.instances, handovers: [], load: undefined };
  let load: RunningLoad<R> | undefined;
  try {
    await running.start();
    await log.waitForServing(definition.instances, 15_000);
    const boundMs = options.warmupMs + options.restarts * (Math.max(options.settleMs, options.cycleMs ?? 0) + options.handoverTimeoutMs) + 10_000;
    load = startLoad(port, boundMs);
    await load.started;
    await sleep(options.warmupMs);
    for (let i = 0; i < options.restarts; i++) {
      const previous = log.serving();
      const triggeredAt = Date.now();
      await running.trigger();
      const handover = await log.waitForHandover(triggeredAt, previous, definition.instances, options.handoverTimeoutMs);
      const records = await log.recordsAsync();
      const phases = handover.newPids[0] === undefined ? undefined : startPhases(records, handover.newPids[0], triggeredAt);
      const cpuMs = handover.newPids[0] === undefined ? undefined : startCpuMs(records, handover.newPids[0]);
      run.handovers.push({ ...handover, ...(phases ? { phases } : {}), ...(cpuMs !== undefined ? { startCpuMs: cpuMs } : {}) });
      await sleep(Math.max(options.settleMs, triggeredAt + (options.cycleMs ?? 0) - Date.now()));
    }
    run.load = await load.stop();
    load = undefined;
  } catch (err) {
    run.error = (err as Error).message;
    if (load) run.load = await Promise.race([load.stop(), sleep(15_000).then(() => undefined)]);
  } finally {
    load?.kill();
    await running.stop().catch((err: Error) => (run.error ??= `stop: ${err.message}`));
    log.killAll();
  }
  // The raw run (every sample) stays in the scratch directory, for a closer look.
  writeFileSync(join(tmpDir, 'run.json'), JSON.stringify(run));
  return run;
}
