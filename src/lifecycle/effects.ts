/**
 * Side effects of the lifecycle, as hooks on its transitions rather than calls
 * in its steps: what systemd hears, the PID file once this generation serves
 * again or stops, the compile cache, the priority a nicer child takes back.
 * Each runs right after the transition it names, in the same turn (so the
 * old generation's MAINPID= reaches systemd before the successor reads the
 * commit). Work a step must await and may fail on (the PID file at ready(),
 * the hand-over) stays in the step.
 */
import { EcdysisError } from '../errors.ts';
import { flushCompileCache } from '../internal/compile-cache.ts';
import { removePidFileIfOwned, writePidFile } from '../internal/pid-file.ts';
import { ownNice, trySetNice } from '../internal/priority.ts';
import { SystemdLifecycle } from '../systemd/lifecycle.ts';
import { ServiceManager, watchdogUsec } from '../systemd/notify.ts';
import { debug, type Generation } from './core.ts';

export function installEffects(g: Generation): void {
  // Local mode sends nothing (start.ts said so): sd_notify goes through the addon.
  const manager = ServiceManager.fromEnvironment(g.local ? false : g.options.systemd, process.env, (error, message) =>
    g.emit({ type: 'notify-failed', message, error: new EcdysisError('ERR_ECDYSIS_SYSTEMD', `could not notify systemd: ${error.message}`, { cause: error }) }),
  );
  const systemd = manager && new SystemdLifecycle(manager, watchdogUsec(process.env), g.options.fdStore);
  const { pidFile, pidFileMode } = g.options;
  /** The PID file names this generation again (it serves again); best effort. */
  const rewritePidFile = () => pidFile && writePidFile(pidFile, process.pid, pidFileMode).catch((e: Error) => debug('pid file: %s', e.message));

  g.onTransition((step, phase, detail) => {
    switch (step) {
      case 'committed': {
        // Started nicer (niceWhileStarting): the priority of the generation it replaces (the parent gives it back too).
        const nice = g.link?.hello.nice;
        if (nice !== undefined && ownNice() > nice) trySetNice(0, nice);
        systemd?.ready(g.generation, g.registry);
        // What this generation compiled, for the next one (accepting begins on a later turn anyway).
        if (g.options.compileCache) flushCompileCache();
        break;
      }
      case 'upgrade':
        systemd?.upgrading(g.generation, g.options.upgradeTimeout);
        break;
      case 'child-failed':
        // The child may have written its pid before failing: the PID file is ours again.
        void rewritePidFile();
        systemd?.upgradeFailed(g.generation, detail.error?.code ?? 'ERR_ECDYSIS_SPAWN_FAILED');
        break;
      case 'commit':
        if (phase.state === 'draining' && phase.exit.info.successor !== undefined) systemd?.committed(g.generation, phase.exit.info.successor);
        break;
      case 'rolled-back':
        if (g.link) systemd?.rolledBack(g.generation, g.link.hello.parentPid);
        break;
      case 'take-back':
        void rewritePidFile();
        systemd?.tookBack(g.generation, g.registry);
        break;
      case 'stop':
        if (pidFile) void removePidFileIfOwned(pidFile);
        systemd?.stopping();
        break;
      case 'partial-stop':
        systemd?.stopping();
        break;
      case 'lame-duck':
        if (phase.state === 'lame-duck') systemd?.lameDuck(phase.until - Date.now());
        break;
      case 'drain':
        // A stopping main process tells systemd how long its drain may take; after an upgrade it is not main any more.
        if (phase.state === 'draining' && phase.exit.info.mode !== 'upgrade' && g.drainRequest) systemd?.draining(g.drainRequest.timeout);
        break;
      case 'finish':
        systemd?.done();
        break;
    }
  });
}
