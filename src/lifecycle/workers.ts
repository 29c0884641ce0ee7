/**
 * Worker groups (option `workers`), as lifecycle policy. A primary holds the
 * sockets, the control sockets, the PID file and systemd's MAINPID, and runs
 * the lifecycle; its workers run the same script and serve. The group enters
 * the primary's steps as hooks on its transitions: it starts inside ready()
 * (the primary is ready when every worker is), it serves from the primary's
 * commit on, and whatever ends the primary's service (commit to a successor,
 * stop, partial stop, rollback, giving up) is passed on as an order; a
 * take-back has the workers serve again. The worker's side is here too: what
 * its primary's orders do to it, and what it reports.
 */
import { availableParallelism } from 'node:os';
import { EcdysisError } from '../errors.ts';
import { defaultCommand, type SpawnCommand } from '../generation/successor.ts';
import { steeringProgram } from '../generation/steering.ts';
import { WorkerGroup, type WorkerNews } from '../generation/worker-group.ts';
import { isGroupMember } from '../generation/registry.ts';
import { native } from '../internal/native.ts';
import { canRestoreNice, ownNice } from '../internal/priority.ts';
import { KIND_FACTS } from '../wire/sockets.ts';
import type { StopFrame, ResumeFrame } from '../wire/protocol.ts';
import { debug, type Generation } from './core.ts';
import { forceDrain, startDrain } from './drain.ts';
import { announceExit, newExit, shutdown } from './exit.ts';
import { rollback } from './rollback.ts';
import { takeBack } from './take-back.ts';
import { predecessorChannel, settleOnStop, workerHandoffFailed } from './worker-handoff.ts';

/** How often a worker tells its primary how many connections it has, when that changed. */
const CONNECTIONS_REPORT_MS = 1_000;

// --- the primary ------------------------------------------------------------------

/** Inside ready(): start every worker; resolves once all are ready (none serves before the commit). */
export async function startWorkers(g: Generation): Promise<void> {
  const count = g.options.workers!;
  const group = new WorkerGroup({
    count,
    generation: g.generation,
    command: workerCommand(),
    timeoutMs: g.link?.hello.upgradeTimeout ?? g.options.upgradeTimeout,
    // Beside a group that serves (an upgrade), at most half the cores start a Node process at once;
    // the first group starts on an idle machine, all at once.
    ...(g.link ? { startAtOnce: Math.max(1, Math.floor(availableParallelism() / 2)) } : {}),
    sockets: (index) => g.registry.forWorker(index),
    nice: () => startingNice(g),
    news: (news) => onNews(g, news),
    serving: (indices) => steer(g, indices),
    peer: (index) => predecessorChannel(g, index),
    handoffFailed: (index, message) => workerHandoffFailed(g, index, message),
  });
  g.group = group;
  try {
    await group.start();
  } catch (err) {
    g.group = undefined;
    throw err;
  }
  // Until the commit, new connections go only where a worker of the previous group still serves.
  steer(g, range(Math.min(count, inheritedMembers(g))));
}

/** The primary's transitions, passed on to its group. */
export function installWorkerGroup(g: Generation): void {
  g.onTransition((step) => {
    const group = g.group;
    if (!group) return;
    switch (step) {
      case 'committed':
        return group.commit();
      case 'gave-up':
        return group.abort(new EcdysisError('ERR_ECDYSIS_COMMIT_TIMEOUT', `generation ${g.generation} gave up before its commit`));
      case 'commit': {
        // The new generation may accept on fewer sockets of each group than this one has workers.
        const phase = g.phase;
        const serves = phase.state === 'draining' ? phase.exit.successorServes : undefined;
        return group.order({ type: 'stop', mode: 'upgrade', ...(serves === undefined ? {} : { successorServes: serves }) });
      }
      case 'take-back':
        return group.order({ type: 'resume' });
      case 'child-failed':
        // A new generation with fewer sockets per group steered new connections to those before it
        // failed: every worker of this group gets its share again.
        return steer(g, group.servingIndices());
      case 'stop':
        return group.order({ type: 'stop', mode: 'stop' });
      case 'partial-stop':
      case 'leave':
      case 'rolled-back':
        // The sockets stay open for somebody else: the workers leave them as they are.
        return group.order({ type: 'stop', mode: 'partial-stop' });
    }
  });
}

/** The workers run what this process runs (not options.command: that is the next generation's). */
function workerCommand(): SpawnCommand {
  return defaultCommand();
}

/**
 * niceWhileStarting applies to a new group's workers too: N Node processes
 * starting at once then take CPU time mostly when the serving group does not
 * need it (bench/, section 6: measured both ways).
 */
function startingNice(g: Generation): { starting: number; ready: number } | undefined {
  const more = g.options.niceWhileStarting;
  if (more === 0) return undefined;
  const own = ownNice();
  // A primary started nicer gets its own priority back at its commit, and so do its workers.
  const ready = g.link?.hello.nice ?? own;
  if (!canRestoreNice(ready)) return undefined;
  // Nicer than the group that serves, not than this primary (itself still nicer until its commit:
  // counting from there started the workers of every later group at 19, the most).
  return { starting: Math.min(19, ready + more), ready };
}

function onNews(g: Generation, news: WorkerNews): void {
  g.emit(news);
  if (news.type === 'worker-exited' && !news.planned) onWorkerCrash(g, news.index);
  if (news.type === 'worker-failed' && g.phase.state === 'ready') onWorkerCrash(g, news.index);
}

/**
 * A worker of this (new) group died while the previous generation still
 * watches: the new version fails as a single process would, and the previous
 * group takes the service back (rollback). Later, it is only replaced.
 */
function onWorkerCrash(g: Generation, index: number): void {
  if (g.phase.state !== 'ready' || !g.link || !g.parentAlive) return;
  debug('worker %d crashed while generation %d still watches: rolling back', index, g.generation - 1);
  rollback(g).catch((err: EcdysisError) => debug('rollback after a worker crash: %s', err.message));
}

/**
 * Steer new connections and datagrams of every TCP and UDP group to the indices
 * whose worker serves. A single process after a group (option `workers` removed
 * at an upgrade) steers to its own socket, index 0, before it reports ready: the
 * previous group's other sockets then get nothing new, their old workers take
 * what waits there (they have no successor: `serves` 1), and they close once
 * the previous generation is gone.
 */
export function steer(g: Generation, serving: number[]): void {
  if (serving.length === 0) return; // nobody to steer to: leave the kernel's choice, the queues wait
  for (const entry of g.registry.entries) {
    if (isGroupMember(entry.key) || KIND_FACTS[entry.kind].family !== 'inet') continue;
    const members = g.registry.groupSize(entry.key);
    const indices = serving.filter((i) => i < members);
    // One socket: nothing to choose.
    if (members === 1 || indices.length === 0) continue;
    try {
      native().attachReuseportProgram(entry.fd, steeringProgram(members, indices));
    } catch (err) {
      debug('steering %s: %s', entry.key, (err as Error).message);
    }
  }
}

/** How many sockets each group had when this primary inherited it (1 when it had no workers). */
function inheritedMembers(g: Generation): number {
  if (!g.link) return Number.POSITIVE_INFINITY;
  const inherited = g.link.hello.sockets.filter((s) => isGroupMember(s.key));
  const byKey = new Map<string, number>();
  for (const socket of inherited) {
    const base = socket.key.slice(0, socket.key.lastIndexOf('#w'));
    byKey.set(base, (byKey.get(base) ?? 1) + 1);
  }
  return byKey.size === 0 ? 1 : Math.min(...byKey.values());
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

// --- a worker ---------------------------------------------------------------------

/** A worker: its primary's orders, and what it reports to it. */
export function installWorker(g: Generation): void {
  const link = g.link!;
  let reported = -1;
  const connections = () => g.listeners.all.reduce((sum, l) => sum + l.connectionCount, 0);
  const report = () => {
    const count = connections();
    reported = count;
    link.sendStatus(g.phase.state, count);
  };
  g.onTransition(() => report());
  const timer = setInterval(() => {
    if (connections() !== reported) report();
  }, CONNECTIONS_REPORT_MS);
  timer.unref();
  g.events.tap((event) => {
    if (event.type !== 'drained') return;
    clearInterval(timer);
    const { completed, closedIdle, destroyed } = event.result;
    link.sendStatus('drained', 0, { completed, closedIdle, destroyed });
  });
  link.onOrder((order) => onOrder(g, order));
}

function onOrder(g: Generation, order: StopFrame | ResumeFrame): void {
  const phase = g.phase;
  debug('order from the primary: %o', order);
  if (order.type === 'stop') settleOnStop(g, order);
  if (order.type === 'resume') {
    if ((phase.state === 'draining' || phase.state === 'probation') && phase.exit.info.mode === 'upgrade' && !phase.exit.goingAway) takeBack(g, phase);
    return;
  }
  if (order.force) {
    if ('exit' in phase) forceDrain(g, phase);
    return;
  }
  if (order.mode === 'upgrade') return replaced(g, order.successor !== false);
  shutdown(g, { mode: order.mode, reason: `primary (pid ${g.link!.hello.parentPid})`, byPrimary: true });
}

/**
 * The primary committed to a new group: stop accepting (the sockets stay open),
 * drain. `successor` false: the new generation accepts on none of this
 * worker's own TCP and UDP sockets (it has fewer workers). New peers stopped
 * coming to them when the new primary steered them to its own indices, before
 * its ready; what still waits in them would wait for nobody, so this worker
 * takes it first (bounded), then stops accepting and drains.
 */
function replaced(g: Generation, successor: boolean): void {
  const phase = g.phase;
  if (phase.state !== 'ready') {
    // Not serving yet, or already exiting: a stop does what is left to do.
    if (phase.state === 'starting' || phase.state === 'committing') shutdown(g, { mode: 'partial-stop', reason: 'replaced' });
    return;
  }
  const exit = newExit({ mode: 'upgrade', reason: 'replaced by a new worker group' }, [...g.listeners.all]);
  const draining = g.enter('replaced', { state: 'draining', exit, drain: undefined });
  const own = successor ? [] : g.listeners.ownGroupSockets(exit.listeners);
  for (const listener of exit.listeners) if (!own.includes(listener)) listener.pause();
  if (own.length === 0) {
    announceExit(g, exit);
    startDrain(g);
    return;
  }
  debug('no successor on worker %d\'s own sockets: taking what waits in them before the drain', g.link!.hello.worker!.index);
  void g.listeners.untilEmpty(own).then(() => {
    // Taken back meanwhile: it serves again. (A forced end meanwhile ends the drain as it starts.)
    if (g.phase !== draining) return;
    for (const listener of own) listener.pause();
    announceExit(g, exit);
    startDrain(g);
  });
}
