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
import { warmSuccessorStart } from '../generation/child-start.ts';
import { closeQuietly, native } from '../internal/native.ts';
import type { Frame } from '../wire/handoff-channel.ts';
import { resolveOptions, type EcdysisOptions, type ResolvedOptions } from './options.ts';
import { checkPidFileDirectory } from '../internal/pid-file.ts';
import { canRestoreNice, ownNice } from '../internal/priority.ts';
import { readListenFds } from '../systemd/activation.ts';
import { prometheusText } from '../internal/prometheus.ts';
import { controlRequest, groupId } from '../triggers/control-socket.ts';
import { localControlRequest } from '../triggers/control-local.ts';
import { localMode, localReason, warnLocalOnce } from '../internal/local-mode.ts';
import { UPGRADE_ENV } from '../wire/protocol.ts';
import { probesRequest } from '../triggers/probes.ts';
import { installSignals } from '../triggers/signals.ts';
import { installTimerTriggers } from '../triggers/timers.ts';
import { debug, Generation } from './core.ts';
import { installEffects } from './effects.ts';
import { health } from './health.ts';
import { listen } from './listen.ts';
import type { Listener } from '../listeners/listener.ts';
import { installMetrics, metricFamilies } from './metrics.ts';
import { closeUnclaimed } from './ready.ts';
import { controlHandler, onSignal } from './triggers.ts';
import { upgrade, upgradeRefusal } from './upgrade.ts';
import { shutdown } from './exit.ts';
import { installWorker, installWorkerGroup } from './workers.ts';
import { takeOffer } from './worker-handoff.ts';

export async function startGeneration(options: EcdysisOptions | undefined): Promise<Generation> {
  const asked = resolveOptions(options);
  // Off Linux (or with ECDYSIS_LOCAL=1) the addon is never loaded: see internal/local-mode.ts.
  const local = localMode();
  // A cluster worker always has an IPC channel: only then is node:cluster loaded to ask (8 ms of start-up).
  if (typeof process.send === 'function' && cluster().isWorker) {
    throw new EcdysisError(
      'ERR_ECDYSIS_UNSUPPORTED',
      'ecdysis cannot run inside a cluster worker (or pm2 cluster mode): the cluster primary owns listening ' +
        'sockets there, so they cannot be handed to a new generation. Run the service as a plain process.',
    );
  }
  if (local) leaveLinuxEnvironment(asked);
  else native();
  const link = local ? undefined : await connectToParent(process.env);
  // A worker runs the primary's script with the primary's options: what is the primary's is left out.
  const resolved = link?.hello.worker ? workerOptions(asked) : local ? localOptions(asked) : asked;
  if (resolved.pidFile) {
    const problem = await checkPidFileDirectory(resolved.pidFile);
    if (problem) {
      if (link) link.close();
      throw invalidOption('options.pidFile', problem, resolved.pidFile);
    }
  }
  // Only generation 0 can be socket-activated; the variables go in any case.
  const activated = local ? [] : readListenFds(process.env);
  const g = new Generation(resolved, link, local);
  installEffects(g);
  installMetrics(g);
  if (g.role === 'primary') installWorkerGroup(g);
  if (g.role === 'worker') installWorker(g);
  if (link) watchParent(g, link);
  g.registry.adoptActivated(activated);
  if (link?.channel) {
    const parentChannel = new GenerationChannel(link.channel, 'parent');
    g.parentChannel = parentChannel;
    // A worker's primary passes on, on this channel, the channel to its successor at an upgrade (lifecycle/workers.ts).
    const offers = g.role === 'worker' ? (frame: Frame) => takeOffer(g, frame) : () => false;
    if (link.peer) {
      // A new worker whose predecessor hands over: that comes on a channel of its own.
      g.receiver = new HandoffReceiver(link.peer, true, resolved.maxHandoffBytes, () => false, () => {}, true);
      link.channel.receive(
        (frame) => {
          if (!offers(frame) && !parentChannel.take(frame)) frame.fds.forEach(closeQuietly);
        },
        () => parentChannel.end(),
      );
    } else {
      g.receiver = new HandoffReceiver(link.channel, link.hello.handoff === true, resolved.maxHandoffBytes, (frame) => offers(frame) || parentChannel.take(frame), () => parentChannel.end());
    }
  }
  try {
    if (link) g.registry.adoptInherited(link.hello.sockets);
    for (const config of resolved.controlSockets) {
      const gid = () => (config.group === undefined ? undefined : groupId(config.group));
      if (local && process.platform === 'win32') warnLocalOnce('control', `the control socket ${config.path} is not created: Node has no Unix sockets on Windows`);
      else await listen<Listener>(g, async () => (local ? localControlRequest(config, controlHandler(g), gid) : controlRequest(config, controlHandler(g))));
    }
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
  if (!link && !local) {
    // A later generation that never gets ready is killed by its parent; generation 0 only waits.
    // A process manager that would take generation 0 for the service, or else a wrapper that exits with it: one fix at a time.
    if (!warnIfManaged()) warnIfWrapped();
    // Its first upgrade then runs less for the first time on the serving loop.
    warmSuccessorStart();
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
  }
  if (!link) g.cancelReadyReminder = remindReady(resolved.upgradeTimeout, () => g.phase.state === 'starting', resolved.workers);
  debug('generation %d (pid %d) created%s%s', g.generation, process.pid, link ? ` by pid ${link.hello.parentPid}` : '', local ? ` in local mode (${localReason()}): upgrades refused` : '');
  return g;
}

/**
 * A worker's options: the primary's, less what is the primary's alone (PID
 * file, control sockets, probes, timers, systemd, the lame-duck delay); a stop
 * signal to a worker is a partial stop (its primary replaces it), an upgrade
 * signal is refused (ERR_ECDYSIS_WORKER).
 */
function workerOptions(options: ResolvedOptions): ResolvedOptions {
  const signals = new Map([...options.signals].map(([signal, action]) => [signal, action === 'stop' ? 'partial-stop' : action] as const));
  return { ...options, signals, pidFile: undefined, controlSockets: [], probes: undefined, timers: [], systemd: false, stopDelay: 0, workers: undefined, fdStore: false };
}

/** Local mode: one process (worker groups need SO_REUSEPORT groups and the addon). */
function localOptions(options: ResolvedOptions): ResolvedOptions {
  if (options.workers === undefined) return options;
  warnLocalOnce('workers', `options.workers is off: worker groups need Linux (${localReason()}); this process serves alone`);
  return { ...options, workers: undefined };
}

/**
 * Local mode: what Linux or systemd may have put in the environment is not for
 * this process (the variables go, so no subprocess takes them either); a
 * process started by an upgrade cannot be one.
 */
function leaveLinuxEnvironment({ systemd, fdStore }: { systemd: 'auto' | false; fdStore: boolean }): void {
  const env = process.env;
  if (env[UPGRADE_ENV] !== undefined) {
    delete env[UPGRADE_ENV];
    throw new EcdysisError(
      'ERR_ECDYSIS_UPGRADE_UNSUPPORTED',
      `this process was started by an upgrade but runs in local mode (${localReason()}): it cannot take the sockets over; upgrades need Linux without ECDYSIS_LOCAL=1 in both generations`,
    );
  }
  if (env.LISTEN_FDS !== undefined) warnLocalOnce('activation', 'the sockets systemd passed (LISTEN_FDS) are not used: socket activation needs Linux and the addon');
  for (const name of ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES']) delete env[name];
  if (systemd !== false && env.NOTIFY_SOCKET) warnLocalOnce('systemd', 'NOTIFY_SOCKET is set, but nothing is sent to systemd (the addon sends it): run a Type=notify unit without ECDYSIS_LOCAL');
  if (fdStore) warnLocalOnce('fdStore', 'options.fdStore is off: systemd and its fd store need Linux');
}

/** The previous generation's drain, then its exit, as events. */
function watchParent(g: Generation, link: ParentLink): void {
  const parentPid = link.hello.parentPid;
  void link.parentDrained.then(() => g.emit({ type: 'parent-drained', parentPid }));
  void parentGone(link).then(() => {
    g.emit({ type: 'parent-exited', parentPid });
    // A worker's primary is gone (killed): it leaves the sockets as they are and drains.
    if (g.role === 'worker' && g.rules.stop === 'begin') shutdown(g, { mode: 'partial-stop', reason: `primary (pid ${parentPid}) exited` });
    // A listener may still be asked for after ready(): until the parent is
    // gone, inherited sockets wait for it (see closeUnclaimed).
    if (g.phase.state !== 'starting' && g.phase.state !== 'committing') closeUnclaimed(g);
  });
}
