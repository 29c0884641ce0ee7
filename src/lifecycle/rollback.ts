/**
 * Operator rollback, the successor's side: a new version that serves but
 * behaves badly asks the previous generation, while it still runs (draining or
 * in its probation), to take the service back as it does when its successor
 * dies; once it serves again, this generation leaves it the sockets (nothing
 * is closed, nothing refused), drains and exits with mode 'rollback'.
 */
import { EcdysisError } from '../errors.ts';
import { debug, type Generation } from './core.ts';
import { startDrain } from './drain.ts';
import { announceExit, newExit, shutdown } from './exit.ts';

/** How long the previous generation has to answer. */
const ROLLBACK_ANSWER_MS = 5_000;

/**
 * Resolves with the pid that serves again; `answer` is called with it before
 * `exit` resolves (a control-socket client is owed the outcome).
 */
export async function rollback(g: Generation, answer?: (pid: number) => void): Promise<number> {
  const link = g.link;
  const unavailable = (why: string) => new EcdysisError('ERR_ECDYSIS_ROLLBACK_UNAVAILABLE', `generation ${g.generation} cannot roll back: ${why}`);
  const phase = g.phase;
  if (phase.state !== 'ready') throw phase.state === 'upgrading' || phase.state === 'rolling-back' ? g.refusal('upgrade')! : unavailable(`it is ${phase.state}`);
  if (!link || !link.parentAlive) throw unavailable(link ? `generation ${g.generation - 1} (pid ${link.hello.parentPid}) has exited` : 'it is the first generation');
  const parentPid = link.hello.parentPid;
  const asking = g.enter('roll-back', { state: 'rolling-back', deferredStop: undefined });
  const result = await link.requestRollback(ROLLBACK_ANSWER_MS);
  if (!result.ok) {
    g.enter('rollback-refused', { state: 'ready' });
    if (asking.deferredStop) shutdown(g, asking.deferredStop);
    throw unavailable(result.reason ?? 'the previous generation refused');
  }
  // The previous generation serves again: leave it the sockets and paths, exactly as they are.
  const exit = newExit({ mode: 'rollback', reason: 'rollback' }, [...g.listeners.all]);
  g.enter('rolled-back', { state: 'draining', exit, drain: undefined });
  g.listeners.leave(exit.listeners);
  debug('rolled back: generation %d (pid %d) serves again', g.generation - 1, parentPid);
  answer?.(parentPid);
  announceExit(g, exit);
  startDrain(g);
  return parentPid;
}
