/**
 * The end of a generation: the drain of its connections once it is draining
 * and drain() was called, the probation after an upgrade, and the finish
 * (drained: nothing of the library holds the process any more).
 */
import { invalidOption } from '../errors.ts';
import { deferred } from '../internal/deferred.ts';
import { drainSockets, type DrainHandle, type DrainOptions, type DrainResult } from '../listeners/drain.ts';
import { warnIfLingering, warnWorkerKilled } from '../internal/guardrails.ts';
import { MAX_TIMEOUT_MS } from './options.ts';
import { validateInteger } from '../internal/validate.ts';
import { debug, type Generation } from './core.ts';
import type { DrainCounts } from '../wire/protocol.ts';
import type { WorkerGroup } from '../generation/worker-group.ts';
import type { ExitingPhase, PhaseOf } from './machine.ts';

/** drain(): the first call's options apply; every call shares one result. */
export function requestDrain(g: Generation, options: DrainOptions): Promise<DrainResult> {
  if (!g.drainRequest) {
    try {
      if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
      const timeout = validateInteger(options.timeout ?? 30_000, 'options.timeout', 0, MAX_TIMEOUT_MS);
      const idleTimeout = options.idleTimeout === undefined ? undefined : validateInteger(options.idleTimeout, 'options.idleTimeout', 0, MAX_TIMEOUT_MS);
      g.drainRequest = { timeout, idleTimeout, result: deferred() };
    } catch (err) {
      return Promise.reject(err);
    }
  }
  startDrain(g);
  return g.drainRequest.result.promise;
}

/** Drain once this generation is draining and drain() has been called. */
export function startDrain(g: Generation): void {
  const current = g.phase;
  const request = g.drainRequest;
  if (current.state !== 'draining' || !request || current.drain) return;
  const { exit } = current;
  // Accepted, but no consumer was left to take them: destroyed when the
  // listener stopped (later ones are among the active ones, counted by the drain).
  const discarded = exit.listeners.reduce((sum, l) => sum + l.discarded, 0);
  // Listeners kept through a stop (stopOnShutdown: false) serve on during the drain.
  const othersServing = g.listeners.all.some((l) => !l.stopped && !exit.listeners.includes(l));
  const own = drainSockets(exit.listeners, { timeout: request.timeout, ...(request.idleTimeout === undefined ? {} : { idleTimeout: request.idleTimeout }) }, othersServing);
  // A primary's connections are its workers': its drain ends with theirs.
  const drain = g.group ? withWorkers(own, g.group, request.timeout, g.generation) : own;
  const phase = g.enter('drain', { state: 'draining', exit, drain });
  if (exit.forced) drain.force();
  void drain.result.then((result) => {
    if (g.phase !== phase) return; // cancelled: the service was taken back
    result.connections += discarded;
    result.destroyed += discarded;
    debug('drained: %o', result);
    const successor = exit.successor;
    if (successor?.watchable && !exit.goingAway && g.options.probation > 0) {
      // Idle, but alive and still watching: a successor that dies now costs nothing.
      const timer = setTimeout(() => {
        if (g.phase.state === 'probation' && g.phase.exit === exit) finish(g, g.phase, result);
      }, g.options.probation);
      g.enter('watch', { state: 'probation', exit, result, timer });
      // It serves nothing now: the successor may upgrade (which ends this probation).
      successor.drained(drainCounts(result));
      return;
    }
    finish(g, phase, result);
  });
}

/** The generation is done: stop what still accepts, complete every stream, resolve drain(). */
export function finish(g: Generation, phase: PhaseOf<'draining'> | PhaseOf<'probation'>, result: DrainResult): void {
  if (g.phase !== phase) return;
  if (phase.state === 'probation') clearTimeout(phase.timer);
  const { exit } = phase;
  exit.successor?.drained(drainCounts(result));
  exit.successor?.forget();
  exit.successor = undefined;
  // The generation's life is over: listeners kept through the stop
  // (stopOnShutdown: false) stop now, so nothing holds the process open.
  const remaining = g.listeners.all.filter((l) => !l.stopped);
  const closing = exit.info.mode === 'stop' ? g.listeners.closeForGood(remaining) : Promise.resolve(remaining.forEach((l) => l.stop()));
  void closing.then(() => {
    for (const listener of g.listeners.all) listener.dispose();
    g.enter('finish', { state: 'drained', exit });
    g.ancestors.close();
    g.emit({ type: 'drained', result });
    g.events.complete();
    g.drainRequest?.result.resolve(result);
    warnIfLingering(g.generation);
  });
}

/** How long after the drain's deadline a worker that has not finished its own, or not exited, is killed. */
const HUNG_WORKER_GRACE_MS = 5_000;

/**
 * A primary's drain: its own (nothing, or a control client) and its workers',
 * added up, once they have exited too. Each worker drains with this deadline:
 * one still running well after it is killed, whether it is hung or drained and
 * kept running by its application, so that none outlives its primary.
 */
function withWorkers(own: DrainHandle, group: WorkerGroup, timeout: number, generation: number): DrainHandle {
  const startedAt = performance.now();
  let cancelled = false;
  const deadline = setTimeout(() => {
    for (const worker of group.kill()) warnWorkerKilled({ ...worker, generation, graceMs: HUNG_WORKER_GRACE_MS });
  }, Math.min(MAX_TIMEOUT_MS, timeout + HUNG_WORKER_GRACE_MS));
  deadline.unref();
  const theirs = group.drained().then(async (counts) => {
    await group.exited();
    return counts;
  });
  const result = Promise.all([own.result, theirs]).then(([mine, theirs]) => {
    clearTimeout(deadline);
    if (cancelled) return new Promise<DrainResult>(() => {});
    return {
      ...mine,
      connections: mine.connections + theirs.completed + theirs.closedIdle + theirs.destroyed,
      completed: mine.completed + theirs.completed,
      closedIdle: mine.closedIdle + theirs.closedIdle,
      destroyed: mine.destroyed + theirs.destroyed,
      elapsedMs: performance.now() - startedAt,
    };
  });
  return {
    result,
    force: () => own.force(),
    cancel: () => {
      cancelled = true;
      clearTimeout(deadline);
      own.cancel();
    },
  };
}

/** What a drain did with its connections, for the successor's counters. */
function drainCounts(result: DrainResult): DrainCounts {
  return { completed: result.completed, closedIdle: result.closedIdle, destroyed: result.destroyed };
}

/** The service is going away: never taken back, and a probation has nothing left to wait for. */
export function goAway(g: Generation, phase: ExitingPhase): void {
  phase.exit.goingAway = true;
  if (phase.state === 'probation') finish(g, phase, phase.result);
}

/** End the drain now (a repeated stop signal, a descendant's `finish`): what still runs is cut. */
export function forceDrain(g: Generation, phase: ExitingPhase): void {
  phase.exit.forced = true;
  const mode = phase.exit.info.mode;
  g.group?.order({ type: 'stop', mode: mode === 'rollback' ? 'partial-stop' : mode, force: true });
  if (phase.state === 'draining') phase.drain?.force();
  goAway(g, phase);
}
