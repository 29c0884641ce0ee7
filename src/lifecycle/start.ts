/**
 * The start of a generation: checks that cannot wait, the link to the parent
 * (a child), sockets systemd passed (generation 0), what was inherited, the
 * control sockets and signals, and the warnings only generation 0 gives.
 */
import { EcdysisError, invalidOption } from '../errors.ts';
import { cluster } from '../internal/builtins.ts';
import { connectToParent, parentGone, type ParentLink } from '../generation/parent-link.ts';
import { compileCacheSupported } from '../internal/compile-cache.ts';
import { GenerationChannel } from '../generation/generation-channel.ts';
import { remindReady, warnIfWrapped } from '../internal/guardrails.ts';
import { warnIfManaged } from '../internal/process-managers.ts';
import { HandoffReceiver } from '../generation/handoff-receive.ts';
import { native } from '../internal/native.ts';
import { resolveOptions, type EcdysisOptions } from './options.ts';
import { checkPidFileDirectory } from '../internal/pid-file.ts';
import { canRestoreNice, ownNice } from '../internal/priority.ts';
import { readListenFds } from '../systemd/activation.ts';
import { prometheusText } from '../internal/prometheus.ts';
import { controlRequest } from '../triggers/control-socket.ts';
import { probesRequest } from '../triggers/probes.ts';
import { installSignals } from '../triggers/signals.ts';
import { installTimerTriggers } from '../triggers/timers.ts';
import { debug, Generation } from './core.ts';
import { installEffects } from './effects.ts';
import { health } from './health.ts';
import { listen } from './listen.ts';
import { installMetrics, metricFamilies } from './metrics.ts';
import { closeUnclaimed } from './ready.ts';
import { controlHandler, onSignal } from './triggers.ts';
import { upgrade, upgradeRefusal } from './upgrade.ts';

export async function startGeneration(options: EcdysisOptions | undefined): Promise<Generation> {
  const resolved = resolveOptions(options);
  if (process.platform !== 'linux') {
    throw new EcdysisError('ERR_ECDYSIS_UNSUPPORTED', `ecdysis supports Linux only, not ${process.platform}`);
  }
  // A cluster worker always has an IPC channel: only then is node:cluster loaded to ask (8 ms of start-up).
  if (typeof process.send === 'function' && cluster().isWorker) {
    throw new EcdysisError(
      'ERR_ECDYSIS_UNSUPPORTED',
      'ecdysis cannot run inside a cluster worker (or pm2 cluster mode): the cluster primary owns listening ' +
        'sockets there, so they cannot be handed to a new generation. Run the service as a plain process.',
    );
  }
  if (resolved.pidFile) {
    const problem = await checkPidFileDirectory(resolved.pidFile);
    if (problem) throw invalidOption('options.pidFile', problem, resolved.pidFile);
  }
  native();
  const link = await connectToParent(process.env);
  // Only generation 0 can be socket-activated; the variables go in any case.
  const activated = readListenFds(process.env);
  const g = new Generation(resolved, link);
  installEffects(g);
  installMetrics(g);
  if (link) watchParent(g, link);
  g.registry.adoptActivated(activated);
  if (link?.channel) {
    const parentChannel = new GenerationChannel(link.channel, 'parent');
    g.parentChannel = parentChannel;
    g.receiver = new HandoffReceiver(link.channel, link.hello.handoff === true, resolved.maxHandoffBytes, (frame) => parentChannel.take(frame), () => parentChannel.end());
  }
  try {
    if (link) g.registry.adoptInherited(link.hello.sockets);
    for (const config of resolved.controlSockets) await listen(g, async () => controlRequest(config, controlHandler(g)));
    const probes = resolved.probes;
    if (probes) await listen(g, () => probesRequest(probes, { health: () => health(g), metrics: () => prometheusText(metricFamilies(g)) }));
  } catch (err) {
    // The parent's upgrade fails with this error rather than a bare exit.
    if (link) {
      const error = err as EcdysisError;
      await link.sendError(error.code ?? 'ERR_ECDYSIS_BAD_ENVIRONMENT', error.message);
      link.close();
    }
    throw err;
  }
  g.removeSignals = installSignals(resolved.signals, (action, signal) => onSignal(g, action, signal));
  // A timer trigger fires only while this generation could upgrade (not while it starts, exits or upgrades).
  installTimerTriggers(resolved.timers, (reason) => {
    if (upgradeRefusal(g)) return false;
    upgrade(g, reason).catch(() => {}); // reported through events() ('refused', 'child-failed')
    return true;
  });
  if (!link) {
    // A later generation that never gets ready is killed by its parent; generation 0 only waits.
    // A process manager that would take generation 0 for the service, or else a wrapper that exits with it: one fix at a time.
    if (!warnIfManaged()) warnIfWrapped();
    if (resolved.compileCache && !compileCacheSupported()) {
      process.emitWarning(`options.compileCache needs Node 22.1 or later (this is ${process.version}); generations start without it`, { code: 'ECDYSIS_COMPILE_CACHE_UNSUPPORTED' });
    }
    const nice = resolved.niceWhileStarting ? ownNice() : undefined;
    if (nice !== undefined && !canRestoreNice(nice)) {
      process.emitWarning(
        `options.niceWhileStarting needs CAP_SYS_NICE or an RLIMIT_NICE of at least ${20 - nice} to give a successor its priority back; generations start at this one's priority`,
        { code: 'ECDYSIS_NICE_UNAVAILABLE' },
      );
    }
    g.cancelReadyReminder = remindReady(resolved.upgradeTimeout, () => g.phase.state === 'starting');
  }
  debug('generation %d (pid %d) created%s', g.generation, process.pid, link ? ` by pid ${link.hello.parentPid}` : '');
  return g;
}

/** The previous generation's drain, then its exit, as events. */
function watchParent(g: Generation, link: ParentLink): void {
  const parentPid = link.hello.parentPid;
  void link.parentDrained.then(() => g.emit({ type: 'parent-drained', parentPid }));
  void parentGone(link).then(() => {
    g.emit({ type: 'parent-exited', parentPid });
    // A listener may still be asked for after ready(): until the parent is
    // gone, inherited sockets wait for it (see closeUnclaimed).
    if (g.phase.state !== 'starting' && g.phase.state !== 'committing') closeUnclaimed(g);
  });
}
