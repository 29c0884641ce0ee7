/**
 * The serving generation's stall at an upgrade (issue 22's first goal): the
 * ecdysis HTTP app with STALL=1 measures its own event-loop delay, the max
 * outside upgrades (from 500 ms after its ready() to the trigger) and the max
 * over its upgrade window (trigger → the end of its drain). `upgrades` upgrades
 * with the machine otherwise idle, then as many under the bench's load (the
 * mixed keep-alive and new-connection clients of section 1), each generation
 * upgraded once, `settleMs` after the one before it exited and no sooner than
 * `minAgeMs` after it began serving: every generation, the first included, is
 * upgraded at the same age, so that each one's time outside upgrades spans the
 * same part of its life (V8's memory reducer runs two major GCs about 8 s into
 * every process's life: a generation 0 upgraded earlier would be compared with
 * a quieter stretch than the others). Each variant (defaults, or an
 * option set through the app's environment) runs on a fresh generation 0.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { APPS, launchApp } from './apps.ts';
import { stopChild, terminatePid } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { startMixedLoad, type MixedLoad } from './load/failure-load.ts';

export interface StallOptions {
  upgrades: number;
  settleMs: number;
  /** A generation is upgraded no sooner than this long after its 'serving' record, ms. */
  minAgeMs: number;
  keepAliveClients: number;
  freshClients: number;
  requestTimeoutMs: number;
  tmpDir: string;
}

export interface StallSample {
  /** Max loop delay outside upgrades (from 500 ms after ready() to the trigger), ms. */
  outsideMs: number;
  /** Max loop delay from the trigger to the end of the drain, ms. */
  windowMs: number;
  windowLengthMs: number;
  /** The same maxima counting only the part of each late tick this process spent on a CPU (its own work, any thread), ms. */
  outsideBusyMs?: number;
  windowBusyMs?: number;
}

export interface StallVariant {
  id: string;
  label: string;
  idle: StallSample[];
  load: StallSample[];
  /** Requests that failed under load (expected 0). */
  failed: number;
  completed: number;
  error?: string;
}

export interface StallResult {
  options: Omit<StallOptions, 'tmpDir'>;
  variants: StallVariant[];
}

const VARIANTS: { id: string; label: string; env: Record<string, string> }[] = [{ id: 'defaults', label: 'ecdysis, defaults', env: {} }];

export async function measureStall(options: StallOptions, progress: (message: string) => void): Promise<StallResult> {
  const variants: StallVariant[] = [];
  for (const variant of VARIANTS) {
    progress(`  ${variant.label}`);
    variants.push(await runVariant(options, variant));
  }
  const { tmpDir: _tmp, ...rest } = options;
  return { options: rest, variants };
}

async function runVariant(options: StallOptions, variant: (typeof VARIANTS)[number]): Promise<StallVariant> {
  const log = new LifecycleLog(join(options.tmpDir, `stall-${variant.id}.jsonl`));
  const port = await freePort();
  const first = launchApp({ script: APPS.ecdysis, log, env: { ...variant.env, PORT: String(port), STALL: '1', BENCH_EVENTS: '0' } });
  const result: StallVariant = { id: variant.id, label: variant.label, idle: [], load: [], failed: 0, completed: 0 };
  let load: MixedLoad | undefined;
  let [pid] = await log.waitForServing(1, 30_000);
  const upgradeOnce = async (into: StallSample[]) => {
    const servingAt = (await log.recordsAsync()).find((r) => r.pid === pid && r.event === 'serving')?.t ?? Date.now();
    await sleep(Math.max(options.settleMs, servingAt + options.minAgeMs - Date.now()));
    const triggeredAt = Date.now();
    process.kill(pid!, 'SIGHUP');
    const handover = await log.waitForHandover(triggeredAt, [pid!], 1, 60_000);
    const stall = (await log.recordsAsync()).find((r) => r.pid === pid && r.event === 'stall');
    if (!stall) throw new Error(`generation pid ${pid} exited without a stall record`);
    into.push({
      outsideMs: stall.outsideMs as number,
      windowMs: stall.windowMs as number,
      windowLengthMs: stall.windowLengthMs as number,
      outsideBusyMs: stall.outsideBusyMs as number,
      windowBusyMs: stall.windowBusyMs as number,
    });
    pid = handover.newPids[0];
  };
  try {
    for (let i = 0; i < options.upgrades; i++) await upgradeOnce(result.idle);
    load = startMixedLoad({
      port,
      keepAliveClients: options.keepAliveClients,
      freshClients: options.freshClients,
      timeoutMs: options.requestTimeoutMs,
      durationMs: options.upgrades * (Math.max(options.settleMs, options.minAgeMs) + 30_000) + 10_000,
    });
    await load.started;
    for (let i = 0; i < options.upgrades; i++) await upgradeOnce(result.load);
    const report = await load.stop();
    load = undefined;
    for (const side of [report.keepAlive, report.fresh]) {
      result.completed += side.ok;
      result.failed += side.requests - side.ok;
    }
  } catch (err) {
    result.error = (err as Error).message;
  } finally {
    load?.kill();
    if (pid !== undefined) await terminatePid(pid).catch(() => {});
    await stopChild(first);
    log.killAll();
  }
  return result;
}
