/**
 * Becoming ready: the PID file, the hand-over received, ready sent and the
 * parent's commit awaited (a child), then accepting. A failure before the
 * commit leaves this generation starting (ready() may be called again); a
 * parent that neither commits nor exits makes it give up, leaving the shared
 * sockets to that parent.
 */
import { EcdysisError } from '../errors.ts';
import { deferred, type Deferred } from '../internal/deferred.ts';
import { checkPidFileWritable, writePidFile } from '../internal/pid-file.ts';
import { debug, type Generation } from './core.ts';
import { startDrain } from './drain.ts';
import { announceExit, newExit, shutdown } from './exit.ts';
import { startWorkers, steer } from './workers.ts';
import type { PhaseOf } from './machine.ts';

/** ready(): every caller shares one outcome. */
export function ready(g: Generation): Promise<void> {
  const phase = g.phase;
  const rule = g.rules.ready;
  if (rule === 'done') return Promise.resolve();
  if (rule === 'join') return (phase as PhaseOf<'committing'>).done.promise;
  if (rule !== 'begin') return Promise.reject(g.refusal('ready'));
  g.cancelReadyReminder();
  const done = deferred<void>();
  void becomeReady(g, done);
  return done.promise;
}

async function becomeReady(g: Generation, done: Deferred<void>): Promise<void> {
  const phase = g.enter('ready', { state: 'committing', done, deferredStop: undefined });
  const { link, receiver } = g;
  const pidFile = g.options.pidFile;
  try {
    // A new generation only checks that it can write the PID file: until the
    // commit, the file names the generation that serves (a stop meanwhile
    // kills this one, and removes the file).
    if (pidFile) await (link ? checkPidFileWritable : writePidFile)(pidFile, process.pid, g.options.pidFileMode);
    if (link && receiver) {
      try {
        await receiver.done;
      } catch (err) {
        // Nothing was given up over there: the upgrade fails, the old generation keeps it all.
        await link.sendError('ERR_ECDYSIS_HANDOFF', (err as Error).message);
        throw err;
      }
      receiver.release();
    }
    if (g.role === 'primary') {
      try {
        await startWorkers(g);
      } catch (err) {
        // The previous generation keeps serving: its upgrade fails with this.
        await link?.sendError((err as EcdysisError).code ?? 'ERR_ECDYSIS_WORKER_FAILED', (err as Error).message);
        throw err;
      }
    } else if (g.role === 'single' && link) {
      // After a group: every new connection to this process's own socket (see steer).
      steer(g, [0]);
    }
  } catch (err) {
    g.enter('ready-failed', { state: 'starting' });
    if (phase.deferredStop) shutdown(g, phase.deferredStop);
    return done.reject(err);
  }
  const upgradeTimeout = link?.hello.upgradeTimeout ?? g.options.upgradeTimeout;
  // How many sockets of each group it accepts on: the previous group's workers of higher indices have no successor.
  const serves = g.role === 'worker' ? undefined : (g.options.workers ?? 1);
  const outcome = link ? await link.sendReady(upgradeTimeout, receiver?.summary, serves) : 'committed';
  if (outcome === 'parent-gone' && g.role === 'worker') {
    // A worker never serves without its primary: the group it belonged to is gone.
    return giveUp(g, done, new EcdysisError('ERR_ECDYSIS_WORKER', `the primary (pid ${link!.hello.parentPid}) exited before it committed to its workers; worker ${link!.hello.worker!.index} gives up`));
  }
  if (outcome === 'timeout') {
    // The parent is alive but stuck (stopped, hung): it still holds the sockets
    // and may serve again. Give up without touching them; it takes the service
    // back when it sees this process exit.
    const parentPid = link!.hello.parentPid;
    return giveUp(
      g,
      done,
      new EcdysisError(
        'ERR_ECDYSIS_COMMIT_TIMEOUT',
        `generation ${g.generation - 1} (pid ${parentPid}) neither committed the hand-over nor exited within ${upgradeTimeout} ms of ready; generation ${g.generation} gives up`,
        { pid: parentPid },
      ),
    );
  }
  if (outcome === 'parent-gone') debug('parent gone before it committed; this generation carries on alone');
  // This generation serves from now on (a stop meanwhile waits in deferredStop).
  if (pidFile && link) {
    await writePidFile(pidFile, process.pid, g.options.pidFileMode).catch((e: Error) =>
      process.emitWarning(`${e.message}; it still names the previous generation`, { code: 'ECDYSIS_PID_FILE' }),
    );
  }
  g.enter('committed', { state: 'ready' });
  // A worker's parent is its primary, alive while it serves: what it did not ask for goes now.
  if (!g.parentAlive || g.role === 'worker') closeUnclaimed(g);
  for (const listener of g.listeners.all) if (g.accepts(listener)) listener.start();
  g.emit({ type: 'ready' });
  done.resolve();
  if (phase.deferredStop) shutdown(g, phase.deferredStop);
}

/** Give up without touching the sockets: the parent still holds them (and may serve again). */
function giveUp(g: Generation, done: Deferred<void>, error: EcdysisError): void {
  const exit = newExit({ mode: 'stop', reason: error.code === 'ERR_ECDYSIS_COMMIT_TIMEOUT' ? 'commit timeout' : 'primary gone' }, [...g.listeners.all]);
  g.enter('gave-up', { state: 'draining', exit, drain: undefined });
  g.listeners.leave(exit.listeners);
  announceExit(g, exit);
  startDrain(g);
  done.reject(error);
}

/**
 * Inherited sockets no listener asked for are closed once this generation is
 * ready and its parent is gone: a listener created after ready() still gets
 * its socket while the parent drains.
 */
export function closeUnclaimed(g: Generation): void {
  const unused = g.registry.closeUnclaimed();
  if (unused.length > 0) debug('closed unused inherited sockets: %s', unused.join(', '));
}
