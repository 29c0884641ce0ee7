/**
 * State hand-over (protocol v4): what handing ~50 MB of in-memory state to the
 * next generation costs in time and memory, next to an upgrade with no state.
 *
 * apps/ecdysis-state.mjs builds the state in generation 0 (one Buffer, or an
 * array of small records whose JSON text is ~50 MB), hands it over with
 * `onHandoff` → `handoff.state()` at every upgrade, and each new generation
 * reads it with `await ecdysis.inherited()` and checks it arrived whole (length
 * or record count, and a checksum) before `ready()`.
 *
 * Per case, each repetition starts generation 0 afresh and upgrades it by
 * SIGHUP a few times, one upgrade after the other. Per upgrade:
 * - SIGHUP → new generation ready: the new generation's `serving` record
 *   (written once its `ready()` resolved, i.e. after the old one committed);
 * - hand-over time: inside the new generation, `Ecdysis.create()` called →
 *   `inherited()` resolved (the state has arrived and, for JSON, been parsed);
 * - SIGHUP → old generation exited: its exit record;
 * - peak RSS (VmHWM) and RSS (VmRSS) of both generations, read by the driver
 *   from /proc/<pid>/status. Just before the SIGHUP the driver resets the old
 *   generation's peak to its current RSS (`5` > /proc/<pid>/clear_refs), so the
 *   peak is the hand-over's and not an earlier one's (generation 0 building
 *   the state, or receiving it as a new generation). The old generation is read
 *   every 10 ms until it is gone (the last reading is within 10 ms of its exit,
 *   after it committed); the new one settleMs after it is ready (its whole life
 *   is the hand-over, so its peak is the receiving).
 *
 * Every wait is bounded; every process is stopped by pid in the finally, as in
 * the other sections.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { APPS, launchApp } from './apps.ts';
import { isAlive, stopChild, terminatePid } from './lib/children.ts';
import { LifecycleLog, type LifecycleRecord } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { memoryMiB, resetPeakRss } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';

export interface HandoffOptions {
  /** Fresh generation-0 processes per case. */
  repetitions: number;
  /** SIGHUP upgrades per repetition, one after the other. */
  upgrades: number;
  /** Size of the state, MB (10^6 bytes): the Buffer's length, or the JSON text's. */
  stateMB: number;
  /** Ecdysis.create({ maxHandoffBytes }) in the app. */
  maxHandoffBytes: number;
  /** After the new generation is ready, wait this long before reading its RSS. */
  settleMs: number;
  /** Bound on generation 0 starting (building the state included). */
  startTimeoutMs: number;
  /** Bound on one upgrade, SIGHUP to the old generation's exit. */
  upgradeTimeoutMs: number;
  tmpDir: string;
}

export type HandoffCaseId = 'none' | 'buffer' | 'json';

export interface HandoffSample {
  repetition: number;
  /** 1 for the first upgrade of a repetition. */
  upgrade: number;
  /** The new generation's number. */
  generation: number;
  oldPid: number;
  newPid: number;
  /** SIGHUP → the new generation's ready() resolved, ms. */
  toReadyMs: number;
  /** SIGHUP → the old generation's exit, ms. */
  toOldExitMs: number;
  /** In the new generation: Ecdysis.create() called → inherited() resolved, ms. */
  handoverMs: number;
  /** In the new generation: process start → inherited() resolved, and → ready() resolved, ms. */
  startToInheritedMs: number;
  startToReadyMs: number;
  /** In the new generation: the length and checksum check after inherited(), ms. */
  verifyMs: number;
  verified: boolean;
  problem?: string;
  /** In the old generation: the handoff.state() call (JSON.stringify and UTF-8 encoding for a JSON state), ms. */
  stateCallMs?: number;
  /** In the old generation: onHandoff handler called → handoff.outcome resolved ('committed'), ms. */
  handlerToCommitMs?: number;
  old: {
    /** VmRSS just before the SIGHUP. */
    rssBeforeMiB: number;
    /** VmHWM at the last reading before it exited (peak reset just before the SIGHUP). */
    peakMiB: number;
    /** VmRSS at that last reading. */
    rssAtExitMiB: number;
    /** VmHWM as the process read it itself in process.on('exit') (cross-check). */
    selfPeakMiB?: number;
    /** Whether the peak could be reset before the SIGHUP (else it is the process's lifetime peak). */
    peakReset: boolean;
  };
  new: {
    /** VmHWM settleMs after ready. */
    peakMiB: number;
    /** VmRSS settleMs after ready. */
    rssMiB: number;
    /** process.memoryUsage() 500 ms after ready, as the app reported it. */
    arrayBuffersMiB?: number;
    heapUsedMiB?: number;
  };
}

export interface HandoffCaseResult {
  id: HandoffCaseId;
  label: string;
  /** Bytes handed over per upgrade: the Buffer's length, or the JSON text's (0 for no state). */
  stateBytes: number;
  /** JSON records (1 for the Buffer, 0 for no state). */
  records: number;
  /** Generation 0 building the state, ms (median over repetitions). */
  buildMs: number;
  /** Generation 0's peak RSS before its first upgrade (start-up and building the state), MiB. */
  gen0PeakMiB: Spread;
  upgrades: number;
  verified: number;
  toReadyMs: Spread;
  handoverMs: Spread;
  toOldExitMs: Spread;
  stateCallMs: Spread;
  verifyMs: Spread;
  oldRssBeforeMiB: Spread;
  oldPeakMiB: Spread;
  oldRssAtExitMiB: Spread;
  newPeakMiB: Spread;
  newRssMiB: Spread;
  newArrayBuffersMiB: Spread;
  samples: HandoffSample[];
  errors: string[];
}

export interface HandoffResult {
  options: Omit<HandoffOptions, 'tmpDir'>;
  /** Whether the driver could reset peak RSS through /proc/<pid>/clear_refs (else old-generation peaks are lifetime peaks). */
  peakReset: boolean;
  cases: HandoffCaseResult[];
}

interface Case {
  id: HandoffCaseId;
  label: string;
}

function cases(stateMB: number): Case[] {
  return [
    { id: 'none', label: 'no state (baseline)' },
    { id: 'buffer', label: `${stateMB} MB Buffer` },
    { id: 'json', label: `${stateMB} MB of JSON (small records)` },
  ];
}

interface Series {
  samples: HandoffSample[];
  built?: LifecycleRecord;
  gen0PeakMiB?: number;
  error?: string;
}

export async function measureHandoff(options: HandoffOptions): Promise<HandoffResult> {
  const { tmpDir: _tmp, ...reported } = options;
  const all = cases(options.stateMB);
  const series = new Map<HandoffCaseId, Series[]>(all.map((c) => [c.id, []]));
  for (let repetition = 0; repetition < options.repetitions; repetition++) {
    // Every case goes first in turn.
    for (const c of all.map((_, i) => all[(i + repetition) % all.length]!)) {
      series.get(c.id)!.push(await upgradeSeries(options, c, repetition));
    }
  }
  const results = all.map((c) => summarise(c, series.get(c.id)!));
  return { options: reported, peakReset: results.every((r) => r.samples.every((s) => s.old.peakReset)), cases: results };
}

async function upgradeSeries(options: HandoffOptions, c: Case, repetition: number): Promise<Series> {
  const log = new LifecycleLog(join(options.tmpDir, `handoff-${c.id}-${repetition}.jsonl`));
  const port = await freePort();
  const first = launchApp({
    script: APPS.ecdysisState,
    log,
    env: { PORT: String(port), STATE_KIND: c.id, STATE_MB: String(c.id === 'none' ? 0 : options.stateMB), MAX_HANDOFF_BYTES: String(options.maxHandoffBytes) },
  });
  const series: Series = { samples: [] };
  let pid: number | undefined = first.pid;
  try {
    await log.waitForPid(pid!, options.startTimeoutMs);
    series.built = find(await log.recordsAsync(), pid!, 'state-built');
    series.gen0PeakMiB = memoryMiB(pid!)?.peak;
    for (let upgrade = 1; upgrade <= options.upgrades; upgrade++) {
      const sample = await upgradeOnce(log, options, pid!, repetition, upgrade);
      series.samples.push(sample);
      pid = sample.newPid;
    }
  } catch (err) {
    series.error = `repetition ${repetition + 1}: ${(err as Error).message}`;
  } finally {
    // The latest generation (not our child once an upgrade happened), then generation 0, then anything else of this log.
    if (pid !== undefined && pid !== first.pid) await terminatePid(pid);
    await stopChild(first);
    log.killAll();
  }
  return series;
}

async function upgradeOnce(log: LifecycleLog, options: HandoffOptions, oldPid: number, repetition: number, upgrade: number): Promise<HandoffSample> {
  const peakReset = resetPeakRss(oldPid);
  const before = memoryMiB(oldPid);
  if (!before) throw new Error(`generation pid ${oldPid} is gone before its upgrade`);
  let oldLast = before;
  const triggeredAt = Date.now();
  process.kill(oldPid, 'SIGHUP');
  const deadline = triggeredAt + options.upgradeTimeoutMs;
  let newPid: number | undefined;
  let serving: LifecycleRecord | undefined;
  let oldExit: LifecycleRecord | undefined;
  for (;;) {
    // VmHWM only grows: the last reading before the exit is the peak up to then.
    const now = memoryMiB(oldPid);
    if (now) oldLast = now;
    const records = await log.recordsAsync();
    const mine = records.filter((r) => r.pid === oldPid && r.t >= triggeredAt);
    const failed = mine.find((r) => r.event === 'child-failed' || r.event === 'refused' || r.event === 'handoff-skipped');
    if (failed) throw new Error(`upgrade ${upgrade} of pid ${oldPid}: ${failed.event}: ${String(failed.code ?? '')} ${String(failed.message ?? failed.reason ?? '')}`);
    newPid ??= mine.find((r) => r.event === 'child-spawned')?.childPid as number | undefined;
    if (newPid !== undefined) serving ??= find(records, newPid, 'serving');
    oldExit ??= find(records, oldPid, 'exit');
    if (serving && (oldExit || !isAlive(oldPid))) break;
    if (Date.now() > deadline) {
      throw new Error(`upgrade ${upgrade} of pid ${oldPid}: not done after ${options.upgradeTimeoutMs} ms (new pid ${newPid ?? 'none'}, ${serving ? 'serving' : 'not serving'}, old ${oldExit ? 'exited' : 'alive'})`);
    }
    await sleep(10);
  }
  const oldGoneAt = oldExit?.t ?? Date.now();
  await sleep(options.settleMs);
  const after = memoryMiB(newPid!);
  if (!after) throw new Error(`the new generation pid ${newPid} died after it was ready`);
  // The next upgrade is refused until the new generation has seen its parent go.
  await waitFor(log, newPid!, 'parent-exited', 10_000);
  const records = await log.recordsAsync();
  const inherited = find(records, newPid!, 'inherited');
  if (!inherited) throw new Error(`the new generation pid ${newPid} wrote no 'inherited' record`);
  const given = records.find((r) => r.pid === oldPid && r.event === 'handoff-given' && r.childPid === newPid);
  const outcome = records.find((r) => r.pid === oldPid && r.event === 'handoff-outcome' && r.childPid === newPid);
  const selfMemory = find(records, oldPid, 'exit-memory');
  const newMemory = find(records, newPid!, 'memory');
  const MiB = 2 ** 20;
  return {
    repetition,
    upgrade,
    generation: Number(inherited.generation),
    oldPid,
    newPid: newPid!,
    toReadyMs: serving!.t - triggeredAt,
    toOldExitMs: oldGoneAt - triggeredAt,
    handoverMs: Number(inherited.createToInheritedMs),
    startToInheritedMs: Number(inherited.startToInheritedMs),
    startToReadyMs: Number(serving!.startToReadyMs),
    verifyMs: Number(inherited.verifyMs),
    verified: inherited.verified === true,
    ...(inherited.problem ? { problem: String(inherited.problem) } : {}),
    ...(given ? { stateCallMs: Number(given.stateMs) } : {}),
    ...(outcome ? { handlerToCommitMs: Number(outcome.ms) } : {}),
    old: {
      rssBeforeMiB: before.rss,
      peakMiB: oldLast.peak,
      rssAtExitMiB: oldLast.rss,
      ...(selfMemory ? { selfPeakMiB: Number(selfMemory.hwmKiB) / 1024 } : {}),
      peakReset,
    },
    new: {
      peakMiB: after.peak,
      rssMiB: after.rss,
      ...(newMemory ? { arrayBuffersMiB: Number(newMemory.arrayBuffers) / MiB, heapUsedMiB: Number(newMemory.heapUsed) / MiB } : {}),
    },
  };
}

async function waitFor(log: LifecycleLog, pid: number, event: string, timeoutMs: number): Promise<LifecycleRecord> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const record = find(await log.recordsAsync(), pid, event);
    if (record) return record;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for '${event}' from pid ${pid} (log: ${log.file})`);
    await sleep(10);
  }
}

function find(records: LifecycleRecord[], pid: number, event: string): LifecycleRecord | undefined {
  return records.find((r) => r.pid === pid && r.event === event);
}

function summarise(c: Case, runs: Series[]): HandoffCaseResult {
  const samples = runs.flatMap((r) => r.samples);
  const of = (pick: (s: HandoffSample) => number | undefined) => spread(samples.map(pick).filter((n): n is number => n !== undefined && Number.isFinite(n)));
  const built = runs.map((r) => r.built).filter((b): b is LifecycleRecord => b !== undefined);
  return {
    id: c.id,
    label: c.label,
    stateBytes: built.length ? Number(built[0]!.bytes) : 0,
    records: built.length ? Number(built[0]!.count) : 0,
    buildMs: spread(built.map((b) => Number(b.buildMs))).median,
    gen0PeakMiB: spread(runs.map((r) => r.gen0PeakMiB).filter((n): n is number => n !== undefined)),
    upgrades: samples.length,
    verified: samples.filter((s) => s.verified).length,
    toReadyMs: of((s) => s.toReadyMs),
    handoverMs: of((s) => s.handoverMs),
    toOldExitMs: of((s) => s.toOldExitMs),
    stateCallMs: of((s) => s.stateCallMs),
    verifyMs: of((s) => s.verifyMs),
    oldRssBeforeMiB: of((s) => s.old.rssBeforeMiB),
    oldPeakMiB: of((s) => s.old.peakMiB),
    oldRssAtExitMiB: of((s) => s.old.rssAtExitMiB),
    newPeakMiB: of((s) => s.new.peakMiB),
    newRssMiB: of((s) => s.new.rssMiB),
    newArrayBuffersMiB: of((s) => s.new.arrayBuffersMiB),
    samples,
    errors: runs.map((r) => r.error).filter((e): e is string => e !== undefined),
  };
}
