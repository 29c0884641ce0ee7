/**
 * Serving again: after a failed upgrade (the old generation never stopped),
 * and after a successor that took over died without a word (take-back: the
 * drain is abandoned, the paused listeners accept again, nothing queued was
 * lost). And what the end of a watched successor means otherwise.
 */
import { EcdysisError } from '../errors.ts';
import type { Successor, SuccessorEnd } from '../generation/successor.ts';
import { debug, newEpoch, type Generation, type StepDetail } from './core.ts';
import { finish } from './drain.ts';
import type { PhaseOf } from './machine.ts';

/** Back to ready (the PID file and systemd follow, effects.ts); no SYN filter survives. */
export function serveAgain(g: Generation, step: 'child-failed' | 'take-back', detail: StepDetail = {}): void {
  g.enter(step, { state: 'ready' }, detail);
  g.registry.readmitAll();
}

/** The successor exited while this generation is still alive. */
export function onSuccessorEnded(g: Generation, child: Successor, end: SuccessorEnd): void {
  const phase = g.phase;
  if ((phase.state !== 'draining' && phase.state !== 'probation') || phase.exit.successor !== child) return;
  phase.exit.successor = undefined;
  if (end.released || !child.watchable || phase.exit.goingAway) {
    debug('successor %d exited (%s)', child.pid, end.released ? `released: ${end.released}` : 'not watched');
    if (phase.state === 'probation') finish(g, phase, phase.result);
    return;
  }
  // It died without a word: take the service back. Its accepted connections
  // are lost with it; everything still queued is accepted here.
  takeBack(g, phase);
  const how = end.signal ? `signal ${end.signal}` : `code ${end.exitCode}`;
  const error = new EcdysisError(
    'ERR_ECDYSIS_SUCCESSOR_FAILED',
    `generation ${g.generation + 1} (pid ${child.pid}) exited (${how}) after it took over; generation ${g.generation} serves again`,
    { pid: child.pid, exitCode: end.exitCode, signal: end.signal },
  );
  debug('%s', error.message);
  g.emit({ type: 'successor-failed', childPid: child.pid, exitCode: end.exitCode, signal: end.signal, error });
}

/**
 * The successor asks this generation to take the service back (operator
 * rollback): done as when it dies, if this generation still can. It then
 * leaves the sockets to this one, drains and exits; it is not watched any more.
 */
export function onRollbackRequest(g: Generation, child: Successor): { ok: boolean; reason?: string } {
  const phase = g.phase;
  if ((phase.state !== 'draining' && phase.state !== 'probation') || phase.exit.successor !== child) {
    return { ok: false, reason: `generation ${g.generation} (pid ${process.pid}) is ${phase.state} and no longer watches generation ${g.generation + 1}` };
  }
  if (phase.exit.goingAway) return { ok: false, reason: `generation ${g.generation} (pid ${process.pid}) was told to stop` };
  phase.exit.successor = undefined;
  child.forget();
  takeBack(g, phase);
  debug('generation %d (pid %d) rolled back: this generation serves again', g.generation + 1, child.pid);
  g.emit({ type: 'successor-rolled-back', childPid: child.pid });
  return { ok: true };
}

/** Serve again: the drain (or probation) abandoned, the paused listeners accept again, a new epoch. */
function takeBack(g: Generation, phase: PhaseOf<'draining'> | PhaseOf<'probation'>): void {
  if (phase.state === 'draining') phase.drain?.cancel();
  else clearTimeout(phase.timer);
  serveAgain(g, 'take-back');
  g.epoch = newEpoch();
  for (const listener of phase.exit.listeners) listener.resume();
}

/** The successor ends on purpose, or upgrades: a probation has nothing left to watch. */
export function onSuccessorReleased(g: Generation, child: Successor): void {
  const phase = g.phase;
  if (phase.state === 'probation' && phase.exit.successor === child) finish(g, phase, phase.result);
}
