/**
 * Stops: a full stop (the listeners close for good, nothing queued is reset),
 * a partial stop (the sockets stay open for another process), a stop before
 * ready() while the parent still serves (the sockets are left to it), and
 * what a generation that is already exiting does with one more. Then the
 * announcement every exit makes, whatever its mode.
 */
import { EcdysisError } from '../errors.ts';
import type { RetireHandler } from '../generation/retire.ts';
import type { Listener } from '../listeners/listener.ts';
import { debug, type Generation } from './core.ts';
import { goAway, forceDrain, startDrain } from './drain.ts';
import type { Exit, ExitInfo, StopRequest } from './machine.ts';

/** stop(), partialStop(), a stop trigger: what the state's rule says. */
export function shutdown(g: Generation, request: StopRequest): void {
  const phase = g.phase;
  const rule = g.rules.stop;
  if (rule === 'defer') {
    // Ready was sent and the parent may be committing right now (or it was asked
    // to take the service back): whether this generation owns the service is
    // known only once it answers.
    if (phase.state === 'committing' || phase.state === 'rolling-back') phase.deferredStop ??= request;
    return;
  }
  if (rule === 'exiting') {
    if (!('exit' in phase)) return;
    goAway(g, phase);
    // A worker stepping aside whose primary stops the service meanwhile: its own sockets close with the group's.
    if (request.mode === 'stop' && request.byPrimary && phase.state === 'stopping' && phase.exit.info.mode === 'partial-stop') {
      g.listeners.refuseWhileLeaving(phase.exit.listeners);
    }
    return;
  }
  if (rule === 'expedite' && phase.state === 'lame-duck') {
    // A second stop: the delay ends now, with the first request's mode.
    clearTimeout(phase.timer);
    return stopNow(g, phase.request);
  }
  if (phase.state === 'upgrading') phase.child?.abort(g.stoppingError());
  const delay = g.options.stopDelay;
  if (delay > 0 && (phase.state === 'ready' || phase.state === 'upgrading')) return lameDuck(g, request, delay);
  stopNow(g, request);
}

/**
 * stop() and partialStop(), called by the application. In a worker a stop is a
 * partial stop, as its stop signals are: it steps aside and its primary starts a
 * replacement. Stopping the service is its primary's: a worker's full stop would
 * unlink the Unix paths and refuse new peers on sockets its whole group serves.
 */
export function stopByApplication(g: Generation, mode: 'stop' | 'partial-stop', reason: string): void {
  shutdown(g, { mode: g.role === 'worker' ? 'partial-stop' : mode, reason });
}

/**
 * Not ready any more (probes, health(), systemd), but accepting and serving
 * for `delay` ms, so that what routes traffic here learns first; then the stop.
 */
function lameDuck(g: Generation, request: StopRequest, delay: number): void {
  const timer = setTimeout(() => {
    const current = g.phase;
    if (current.state === 'lame-duck' && current.timer === timer) stopNow(g, current.request);
  }, delay);
  g.enter('lame-duck', { state: 'lame-duck', request, timer, until: Date.now() + delay });
  g.emit({ type: 'lame-duck', mode: request.mode, reason: request.reason, delayMs: delay });
}

/** The stop itself: the listeners stop (or close for good), the exit is announced, the drain starts. */
function stopNow(g: Generation, request: StopRequest): void {
  const phase = g.phase;
  // Before ready, while the parent still serves, the sockets are the parent's
  // too: stopping this generation must leave them, and their paths, exactly as
  // they are, for every listener (stopOnShutdown: false ones included).
  const parentServes = phase.state === 'starting' && g.parentAlive;
  const all = g.listeners.all;
  const exit = newExit({ mode: request.mode, reason: request.reason }, parentServes ? [...all] : all.filter((l) => l.stopOnShutdown), request.byPrimary ? 2 : 1);
  // A parent still watching us must not take the service back: this end is on purpose.
  if (phase.state !== 'starting') g.link?.release(request.mode);
  if (parentServes) {
    g.enter('leave', { state: 'draining', exit, drain: undefined });
    g.listeners.leave(exit.listeners);
  } else if (request.mode === 'partial-stop' && g.role !== 'worker') {
    g.enter('partial-stop', { state: 'draining', exit, drain: undefined });
    for (const listener of exit.listeners) listener.stop();
  } else {
    g.enter('stop', { state: 'stopping', exit });
    for (const listener of exit.listeners) listener.prepareStop();
    // A worker's partial stop (its own stop signal, or its primary leaving the
    // sockets): its primary steers new peers away once it hears `released`;
    // what already waits in this worker's own socket is taken first.
    const closing = request.mode === 'stop' ? g.listeners.closeForGood(exit.listeners) : g.listeners.leaveWhenEmpty(exit.listeners);
    void closing.finally(() => {
      g.enter('closed', { state: 'draining', exit, drain: undefined });
      announceExit(g, exit);
      startDrain(g);
    });
    return;
  }
  announceExit(g, exit);
  startDrain(g);
}

/** `signalsToForce`: see Exit (an upgrade's is always 2). */
export function newExit(info: ExitInfo, listeners: Listener[], signalsToForce: 1 | 2 = 1): Exit {
  return { info, listeners, successor: undefined, goingAway: info.mode !== 'upgrade', stopSignals: 0, signalsToForce: info.mode === 'upgrade' ? 2 : signalsToForce, forced: false };
}

/** Once the exiting listeners no longer accept: abort `signal`, emit `exiting`, resolve `exit`. */
export function announceExit(g: Generation, exit: Exit): void {
  const { info } = exit;
  g.epoch.abort.abort(new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${g.generation} is exiting (${info.mode}: ${info.reason})`));
  g.emit({ type: 'exiting', mode: info.mode, reason: info.reason });
  g.epoch.exit.resolve(info);
}

/** What this generation's retire endpoint answers its descendants (maxDrainingGenerations). */
export function retireHandler(g: Generation): RetireHandler {
  return {
    state: () => g.phase.state,
    finish: (peer) => {
      const phase = g.phase;
      if ((phase.state !== 'draining' && phase.state !== 'probation') || phase.exit.info.mode !== 'upgrade') return false;
      debug('told to finish by pid %d', peer.pid);
      g.emit({ type: 'retire-requested', requestedBy: peer.pid });
      // The deadline is now: what still runs is cut, and the service is never taken back.
      forceDrain(g, phase);
      return true;
    },
  };
}
