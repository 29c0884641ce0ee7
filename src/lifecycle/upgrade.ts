/**
 * The parent's side of an upgrade, as policy: whether it may start, how the
 * next generation is started (command, draining chain, priority), the
 * hand-over, and the commit: the one step, synchronous with the state change,
 * after which the successor serves and this generation drains. The mechanics
 * (spawn, hello, wait, watch) are in internal/parent.ts.
 */
import { EcdysisError, invalidOption } from '../errors.ts';
import { validateCommand } from './options.ts';
import { HandoffSender, type HandoffHandler } from '../generation/handoff-send.ts';
import { GenerationChannel } from '../generation/generation-channel.ts';
import { defaultCommand, spawnSuccessor, type Successor, type PendingSuccessor, type SpawnCommand } from '../generation/successor.ts';
import { canRestoreNice, ownNice } from '../internal/priority.ts';
import { upgradeUnsupported } from '../internal/local-mode.ts';
import { HANDOFF_PROTOCOL_VERSION, type HandoffSummary, type ReadyFrame } from '../wire/protocol.ts';
import { closeQuietly } from '../internal/native.ts';
import { debug, type Generation } from './core.ts';
import { passOnWorkerHandoff } from './worker-handoff.ts';
import { startDrain } from './drain.ts';
import { announceExit, newExit, retireHandler } from './exit.ts';
import type { OutgoingHandoff, Phase, PhaseOf } from './machine.ts';
import { onRollbackRequest, onSuccessorEnded, onSuccessorReleased, serveAgain } from './take-back.ts';

/** upgrade()'s options. */
export interface UpgradeOptions {
  /** Variables changed in the next generation's environment (undefined removes one); it passes them on. */
  env?: Record<string, string | undefined>;
}

/** upgrade(): the options checked (a rejection, never a throw). */
export function upgradeWith(g: Generation, options: UpgradeOptions): Promise<number> {
  try {
    if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
    const env = options.env;
    if (env !== undefined && (typeof env !== 'object' || env === null || Object.entries(env).some(([, v]) => v !== undefined && typeof v !== 'string'))) {
      throw invalidOption('options.env', 'must be an object of strings (undefined removes a variable)', env);
    }
    return upgrade(g, 'upgrade()', undefined, env);
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Start the next generation; resolves with its pid once it serves. `answer`
 * is called with that pid at the commit, before `exit` resolves: a caller that
 * owes someone the outcome (a control-socket client) writes it there, since
 * the application may exit on the next line after its drain.
 */
export async function upgrade(g: Generation, reason: string, answer?: (pid: number) => void, env?: Record<string, string | undefined>): Promise<number> {
  const refusal = upgradeRefusal(g);
  if (refusal) {
    g.emit({ type: 'refused', reason, error: refusal });
    throw refusal;
  }
  // A parent still in its probation would take the service back if this
  // generation died: from now on the next one is this generation's to watch.
  if (g.link?.drained && g.parentAlive) g.link.release('upgrade');
  const startedAt = performance.now();
  const requestedAt = Date.now();
  const handlers = [...g.handoffHandlers];
  const handoff = handlers.length === 0 ? undefined : { sender: new HandoffSender(g.generation + 1, g.options.maxHandoffBytes), sent: undefined, skipped: false };
  const phase = g.enter('upgrade', { state: 'upgrading', reason, startedAt, child: undefined, handoff });
  g.emit({ type: 'requested', reason });
  const generation = g.generation + 1;
  let child: Successor;
  try {
    const [command, draining] = await Promise.all([resolveCommand(g, env), g.ancestors.chainForChild(retireHandler(g))]);
    if (g.phase !== phase) throw g.stoppingError();
    const { fds, sockets } = g.registry.forSuccessor();
    phase.child = spawnSuccessor({
      command,
      generation,
      fds,
      sockets,
      timeoutMs: g.options.upgradeTimeout,
      handoff: handoff !== undefined,
      ...(draining ? { draining, beforeCommit: () => makeRoom(g) } : {}),
      ...startingNice(g),
      metrics: g.metrics.snapshot(),
      requestedAt,
      onSpawn: (childPid) => g.emit({ type: 'child-spawned', childPid }),
      commit: (ready, frame) => commit(g, phase, ready, frame),
    });
    const pending = phase.child;
    const successor = new GenerationChannel(pending.channel, 'successor');
    g.successorChannel = successor;
    // Worker groups: the new primary's channels to its new workers, each passed on to the old worker of its index.
    const offered = new Set<number>();
    pending.channel?.receive(
      (frame) => {
        if (frame.header.t === 'worker-handoff') return passOnWorkerHandoff(g, phase, frame, offered);
        if (!successor.take(frame)) frame.fds.forEach(closeQuietly);
      },
      () => successor.end(),
    );
    if (handoff) void handOver(pending, handoff, handlers);
    child = await pending.ready;
  } catch (err) {
    const error = err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', (err as Error).message, { cause: err });
    // Whatever the handlers gave stays here: moved connections resume where they stopped (in the workers too).
    handoff?.sender.abort();
    g.group?.handoffFailed();
    // A child that stopped itself before it was ready must not have touched the shared sockets.
    if (g.phase === phase) serveAgain(g, 'child-failed', { error });
    g.emit({ type: 'child-failed', error, elapsedMs: performance.now() - startedAt, ...(handoff?.sender.started ? { handoff: 'kept' as const } : {}) });
    throw error;
  }
  // commit() moved this generation to 'draining' when the child reported ready.
  const elapsedMs = performance.now() - startedAt;
  debug('generation %d (pid %d) ready after %d ms', generation, child.pid, Math.round(elapsedMs));
  g.emit({ type: 'child-ready', childPid: child.pid, elapsedMs });
  answer?.(child.pid);
  const current = g.phase as Phase;
  if (current.state === 'draining' && current.exit.successor === child) {
    announceExit(g, current.exit);
    startDrain(g);
  }
  return child.pid;
}

/** Why this generation cannot upgrade now, or undefined. */
export function upgradeRefusal(g: Generation): EcdysisError | undefined {
  if (g.local) return upgradeUnsupported(g.generation);
  if (g.role === 'worker') {
    return new EcdysisError('ERR_ECDYSIS_WORKER', `worker ${g.link!.hello.worker!.index} cannot upgrade: upgrades are its primary's (pid ${g.link!.hello.parentPid})`, { pid: g.link!.hello.parentPid });
  }
  const refused = g.refusal('upgrade');
  if (refused) return refused;
  const parentPid = g.link?.hello.parentPid;
  // A parent that said its drain is over holds nothing back, even if the application keeps it running.
  if (g.parentAlive && !g.link!.drained && !g.ancestors.knows(parentPid!)) {
    // With maxDrainingGenerations > 1 a draining parent is no obstacle, if it can be told to finish.
    const why = g.options.maxDrainingGenerations > 1 ? ' and did not name a retire endpoint (an older release)' : ' (maxDrainingGenerations is 1)';
    return new EcdysisError(
      'ERR_ECDYSIS_PARENT_ALIVE',
      `generation ${g.generation} cannot upgrade while generation ${g.generation - 1} (pid ${parentPid}) is still running${why}`,
      { pid: parentPid },
    );
  }
  return undefined;
}

/** `env`: changes for this upgrade only (an operator's `ecdysis upgrade --env`; undefined removes a variable). */
async function resolveCommand(g: Generation, env?: Record<string, string | undefined>): Promise<SpawnCommand> {
  const option = g.options.command;
  const base = defaultCommand();
  const resolved = option === undefined ? base : { ...base, ...(typeof option === 'function' ? validateCommand(await option(), 'options.command()') : option) };
  const command = env ? { ...resolved, env: { ...resolved.env, ...env } } : resolved;
  const cache = g.options.compileCache;
  if (cache && command.env.NODE_COMPILE_CACHE === undefined) return { ...command, env: { ...command.env, NODE_COMPILE_CACHE: cache } };
  return command;
}

/** niceWhileStarting, when this process may give the successor its priority back. */
function startingNice(g: Generation): { nice?: { starting: number; ready: number } } {
  const more = g.options.niceWhileStarting;
  if (more === 0) return {};
  const own = ownNice();
  return canRestoreNice(own) ? { nice: { starting: own + more, ready: own } } : {};
}

/**
 * The child is ready: commit, in the same step as the state changes, so that
 * nothing can run in between (a subscriber calling stop() sees 'draining' and
 * never touches the sockets the successor now owns). Returns the refusal when
 * this generation cannot commit (a stop came first, the hand-over does not match).
 */
function commit(g: Generation, phase: PhaseOf<'upgrading'>, child: Successor, ready: ReadyFrame): EcdysisError | undefined {
  if (g.phase !== phase) return new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${g.generation} is shutting down; the upgrade was abandoned`);
  const handoff = phase.handoff;
  if (handoff && child.protocol < HANDOFF_PROTOCOL_VERSION) {
    handoff.skipped = true;
  } else if (handoff && !sameSummary(handoff.sent, ready.handoff)) {
    return new EcdysisError(
      'ERR_ECDYSIS_HANDOFF',
      `generation ${g.generation + 1} reports receiving ${JSON.stringify(ready.handoff ?? null)} of the hand-over, not ${JSON.stringify(handoff.sent ?? null)}`,
    );
  }
  const exit = newExit({ mode: 'upgrade', reason: phase.reason, successor: child.pid }, [...g.listeners.all]);
  exit.successor = child;
  if (ready.serves !== undefined) exit.successorServes = ready.serves;
  g.enter('commit', { state: 'draining', exit, drain: undefined });
  for (const listener of exit.listeners) listener.pause();
  if (handoff?.skipped) handoff.sender.abort();
  else handoff?.sender.commit();
  // Our own parent, if it still watches us, must not take the service back when we exit.
  g.link?.release('upgrade');
  void child.ended.then((end) => onSuccessorEnded(g, child, end));
  void child.released.then(() => onSuccessorReleased(g, child));
  child.onRollback(() => onRollbackRequest(g, child));
  if (handoff?.skipped) {
    queueMicrotask(() =>
      g.emit({ type: 'handoff-skipped', reason: `generation ${g.generation + 1} speaks protocol ${child.protocol}, without hand-over: this generation kept its state and connections` }),
    );
  }
  return undefined;
}

function sameSummary(a: HandoffSummary | undefined, b: HandoffSummary | undefined): boolean {
  return a !== undefined && b !== undefined && a.state === b.state && a.files === b.files && a.sockets === b.sockets;
}

/**
 * Run the onHandoff handlers once the child reads the hand-over channel, then
 * send. A failure kills the child: the upgrade fails and nothing is given up.
 */
async function handOver(pending: PendingSuccessor, handoff: OutgoingHandoff, handlers: HandoffHandler[]): Promise<void> {
  const protocol = await pending.accepted;
  if (protocol < HANDOFF_PROTOCOL_VERSION || !pending.channel || pending.pid === undefined) return;
  try {
    handoff.sent = await handoff.sender.run(handlers, pending.channel, pending.pid);
  } catch (err) {
    const error = err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_HANDOFF', `an onHandoff handler failed: ${(err as Error).message}`, { cause: err });
    pending.abort(error);
  }
}

/**
 * The successor is ready: with one more draining generation, the oldest may
 * have to finish first (maxDrainingGenerations).
 */
async function makeRoom(g: Generation): Promise<void> {
  for (const { ancestor, drained, elapsedMs } of await g.ancestors.makeRoom()) {
    debug('generation %d (pid %d) told to finish: %s after %d ms', ancestor.generation, ancestor.pid, drained ? 'drained' : 'no answer', Math.round(elapsedMs));
    g.emit({ type: 'ancestor-retired', ancestorGeneration: ancestor.generation, ancestorPid: ancestor.pid, drained, elapsedMs });
  }
}
