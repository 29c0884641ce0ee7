/**
 * Ecdysis: the options, the one state machine, the public methods.
 *
 * Every transition goes through #enter(), which checks it against TRANSITIONS;
 * what a state needs to remember (the child being started, a stop that waits
 * for a commit, how this generation is exiting) lives in the state itself, so
 * there is no flag beside it. Side effects and events come after the
 * transition, never before: a subscriber that calls back in sees the new state.
 * Every public method checks the state first and fails fast with a coded error.
 */
import { debuglog } from 'node:util';
import type { Observable } from 'rxjs';
import { EcdysisError, invalidOption } from './errors.ts';
import { connectToParent, type ParentLink } from './internal/child.ts';
import { remindReady, warnIfLingering, warnIfWrapped } from './internal/guardrails.ts';
import { drainSockets, type DrainHandle, type DrainOptions, type DrainResult } from './internal/drain.ts';
import { native } from './internal/native.ts';
import { cluster } from './internal/builtins.ts';
import { MAX_TIMEOUT_MS, resolveOptions, validateCommand, validateInteger, type EcdysisOptions, type ResolvedOptions } from './internal/options.ts';
import { defaultCommand, spawnGeneration, type CommittedChild, type PendingChild, type SpawnCommand, type SuccessorEnd } from './internal/parent.ts';
import { checkPidFileDirectory, checkPidFileWritable, removePidFileIfOwned, writePidFile } from './internal/pid-file.ts';
import { Registry } from './internal/registry.ts';
import { DrainingGenerations } from './internal/draining.ts';
import { compileCacheSupported, flushCompileCache } from './internal/compile-cache.ts';
import { canRestoreNice, ownNice, trySetNice } from './internal/priority.ts';
import type { RetireHandler } from './internal/retire.ts';
import { installSignals, type TriggerAction } from './triggers/signals.ts';
import { LifecycleEvents } from './internal/events.ts';
import { GenerationChannel } from './internal/generation-channel.ts';
import { HandoffReceiver, HandoffSender, type HandoffHandler, type Inherited } from './internal/handoff.ts';
import { HANDOFF_PROTOCOL_VERSION, type HandoffSummary, type ReadyFrame } from './internal/protocol.ts';
import { ControlListener, controlRequest, type ControlHandler } from './triggers/control-socket.ts';
import { readListenFds } from './systemd/activation.ts';
import { SystemdLifecycle } from './systemd/lifecycle.ts';
import { ServiceManager, watchdogUsec } from './systemd/notify.ts';
import { ListenerSet } from './internal/listener-set.ts';
import type { ListenRequest } from './kinds/kind.ts';
import { tcpRequest, type TcpListenOptions } from './kinds/tcp.ts';
import { unixStreamRequest, type UnixListenOptions } from './kinds/unix.ts';
import { splitPathArguments } from './kinds/unix-request.ts';
import type { Listener } from './listeners/listener.ts';
import type { TcpListener } from './listeners/tcp-listener.ts';
import type { UnixListener } from './listeners/unix-listener.ts';
import { udpRequest, type UdpListenOptions } from './kinds/udp.ts';
import { unixDatagramRequest, type UnixDatagramListenOptions } from './kinds/unix-datagram.ts';
import { unixSeqpacketRequest, type UnixSeqpacketListenOptions } from './kinds/unix-seqpacket.ts';
import type { DatagramSocket } from './listeners/datagram-socket.ts';
import type { SeqpacketListener } from './listeners/seqpacket-listener.ts';
import type { UdpSocket } from './listeners/udp-socket.ts';
import {
  TRANSITIONS,
  deferred,
  type Deferred,
  type EcdysisEvent,
  type EcdysisState,
  type EventPayload,
  type Exit,
  type ExitInfo,
  type OutgoingHandoff,
  type Phase,
  type PhaseOf,
  type StopRequest,
  type WaitForParentOptions,
} from './internal/lifecycle.ts';

export type { EcdysisEvent, EcdysisState, ExitInfo, ExitMode, WaitForParentOptions } from './internal/lifecycle.ts';

const debug = debuglog('ecdysis');

/**
 * One generation of a service that can be upgraded without dropping a connection.
 *
 * @example
 * const ecdysis = await Ecdysis.create({ pidFile: '/run/app/app.pid' });
 * const web = await ecdysis.listenTcp({ host: '::', port: 8080 });
 * web.serve(http.createServer(handler));
 * await ecdysis.ready();
 * await ecdysis.exit;
 * await ecdysis.drain({ timeout: 30_000 });
 */
export class Ecdysis {
  /** True when this process was started by an upgrade. */
  readonly isChild: boolean;
  /** 0 on first start, +1 per upgrade. */
  readonly generation: number;

  readonly #options: ResolvedOptions;
  readonly #events: LifecycleEvents;
  /** onHandoff() handlers, run at each upgrade attempt. */
  readonly #handoffHandlers: HandoffHandler[] = [];
  /** A child's side of the hand-over, when its parent speaks version 4. */
  #receiver: HandoffReceiver | undefined;
  /** Messages with the previous generation (a child) and with the latest successor (after a spawn). */
  #parentChannel: GenerationChannel | undefined;
  #successorChannel: GenerationChannel | undefined;
  /** What systemd hears of the lifecycle, when it is listening. */
  readonly #systemd: SystemdLifecycle | undefined;
  readonly #registry = new Registry();
  readonly #link: ParentLink | undefined;
  readonly #listeners = new ListenerSet(this.#registry);
  /** Older generations still draining, and this one's retire endpoint (maxDrainingGenerations > 1). */
  readonly #draining: DrainingGenerations;
  #phase: Phase = { state: 'starting' };
  /** ready() in progress (one for every caller). */
  #ready: Promise<void> | undefined;
  /** Replaced when a generation that took the service back may exit again. */
  #abort = new AbortController();
  #exit = deferred<ExitInfo>();
  /** drain(): its options (the first call's) and its one result. */
  #drainOptions: { timeout: number; idleTimeout: number | undefined } | undefined;
  #drained: Deferred<DrainResult> | undefined;
  #drain: DrainHandle | undefined;
  #removeSignals: (which: readonly TriggerAction[]) => void = () => {};
  #cancelReadyReminder: () => void = () => {};

  private constructor(options: ResolvedOptions, link: ParentLink | undefined) {
    this.#options = options;
    this.#link = link;
    this.isChild = link !== undefined;
    this.generation = link?.hello.generation ?? 0;
    this.#draining = new DrainingGenerations(options.maxDrainingGenerations, this.generation, link?.hello.draining ?? []);
    this.#events = new LifecycleEvents(this.generation);
    const manager = ServiceManager.fromEnvironment(options.systemd, process.env, (error, message) =>
      this.#emit({ type: 'notify-failed', message, error: new EcdysisError('ERR_ECDYSIS_SYSTEMD', `could not notify systemd: ${error.message}`, { cause: error }) }),
    );
    this.#systemd = manager && new SystemdLifecycle(manager, watchdogUsec(process.env), options.fdStore);
    if (link) {
      void link.parentDrained.then(() => this.#emit({ type: 'parent-drained', parentPid: link.hello.parentPid }));
      void parentGone(link).then(() => {
        this.#emit({ type: 'parent-exited', parentPid: link.hello.parentPid });
        // A listener may still be asked for after ready(): until the parent is
        // gone, inherited sockets wait for it (see #closeUnclaimed).
        if (this.#phase.state !== 'starting' && this.#phase.state !== 'committing') this.#closeUnclaimed();
      });
    }
  }

  /**
   * Resolves when this generation starts exiting: after a successful upgrade,
   * or a stop. If it takes the service back (its successor died), a new
   * promise takes the place of this one, for its next exit.
   */
  get exit(): Promise<ExitInfo> {
    return this.#exit.promise;
  }

  /**
   * Aborted when this generation starts exiting; its reason is an EcdysisError.
   * A generation that takes the service back gets a new, unaborted signal.
   */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  /**
   * Start this generation: validate the options, and when started by an upgrade,
   * read what the previous generation handed over.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION, ERR_ECDYSIS_UNSUPPORTED (cluster
   * worker, non-Linux), ERR_ECDYSIS_BAD_ENVIRONMENT, ERR_ECDYSIS_PROTOCOL,
   * ERR_ECDYSIS_PROTOCOL_VERSION.
   * @example
   * const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM'] });
   */
  static async create(options?: EcdysisOptions): Promise<Ecdysis> {
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
    const ecdysis = new Ecdysis(resolved, link);
    ecdysis.#registry.adoptActivated(activated);
    if (link?.channel) {
      const parentChannel = new GenerationChannel(link.channel, 'parent');
      ecdysis.#parentChannel = parentChannel;
      ecdysis.#receiver = new HandoffReceiver(link.channel, link.hello.handoff === true, resolved.maxHandoffBytes, (frame) => parentChannel.take(frame), () => parentChannel.end());
    }
    if (link) {
      try {
        ecdysis.#registry.adoptInherited(link.hello.sockets);
      } catch (err) {
        const error = err as EcdysisError;
        await link.sendError(error.code ?? 'ERR_ECDYSIS_BAD_ENVIRONMENT', error.message);
        link.close();
        throw err;
      }
    }
    try {
      for (const config of resolved.controlSockets) await ecdysis.#listen(async () => controlRequest(config, ecdysis.#controlHandler()));
    } catch (err) {
      if (link) {
        const error = err as EcdysisError;
        await link.sendError(error.code ?? 'ERR_ECDYSIS_BAD_ENVIRONMENT', error.message);
        link.close();
      }
      throw err;
    }
    ecdysis.#removeSignals = installSignals(resolved.signals, (action, signal) => ecdysis.#onTrigger(action, signal));
    if (!link) {
      // A later generation that never gets ready is killed by its parent; generation 0 only waits.
      warnIfWrapped();
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
      ecdysis.#cancelReadyReminder = remindReady(resolved.upgradeTimeout, () => ecdysis.#phase.state === 'starting');
    }
    debug('generation %d (pid %d) created%s', ecdysis.generation, process.pid, link ? ` by pid ${link.hello.parentPid}` : '');
    return ecdysis;
  }

  /** The current state of the lifecycle. */
  get state(): EcdysisState {
    return this.#phase.state;
  }

  /** True while the previous generation is still running (draining). */
  get parentAlive(): boolean {
    return this.#link?.parentAlive ?? false;
  }

  /** Listeners of this generation, in creation order (control sockets are not listeners). */
  get listeners(): readonly Listener[] {
    return this.#listeners.all.filter((l) => !(l instanceof ControlListener));
  }

  /**
   * Listen on TCP, or take over the same socket from the previous generation:
   * the same request in the next generation gets the same kernel socket.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION (unknown options too),
   * ERR_ECDYSIS_LISTENER_CONFLICT, ERR_ECDYSIS_STOPPING; system errors such as
   * EADDRINUSE, shaped like Node's.
   * @example
   * const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 8080 });
   */
  listenTcp(options: TcpListenOptions): Promise<TcpListener> {
    return this.#listen(() => tcpRequest(options));
  }

  /**
   * Listen on a Unix stream socket (a filesystem path, or a Linux abstract name
   * starting with '\0'), or take it over from the previous generation. A stale
   * socket file nobody listens on is replaced. The path is unlinked only on a
   * full stop, never on an upgrade.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION, ERR_ECDYSIS_LISTENER_CONFLICT, ERR_ECDYSIS_STOPPING;
   * system errors such as EADDRINUSE.
   * @example
   * const admin = await ecdysis.listenUnix('/run/app/admin.sock', { mode: 0o660 });
   */
  listenUnix(path: string, options?: UnixListenOptions): Promise<UnixListener>;
  listenUnix(options: UnixListenOptions & { systemd: string }): Promise<UnixListener>;
  listenUnix(pathOrOptions: string | (UnixListenOptions & { systemd: string }), maybeOptions?: UnixListenOptions): Promise<UnixListener> {
    const { path, options } = splitPathArguments(pathOrOptions, maybeOptions);
    return this.#listen(() => unixStreamRequest(path, options));
  }

  /**
   * Bind UDP, or take over the same socket from the previous generation. The
   * new generation reads only once the old one has committed; what arrives
   * meanwhile waits in the kernel's buffer.
   *
   * @throws {EcdysisError} as listenTcp().
   * @example
   * const dns = await ecdysis.listenUdp({ host: '127.0.0.1', port: 5353 });
   * for await (const msg of dns) await msg.reply(answer(msg.data));
   */
  listenUdp(options: UdpListenOptions): Promise<UdpSocket> {
    return this.#listen(() => udpRequest(options));
  }

  /**
   * Bind a Unix datagram socket (a path, or an abstract name starting with
   * '\0'), or take it over from the previous generation; the path is unlinked
   * only on a full stop.
   *
   * @throws {EcdysisError} as listenUnix().
   * @example
   * const log = await ecdysis.listenUnixDatagram('/run/app/log.sock');
   */
  listenUnixDatagram(path: string, options?: UnixDatagramListenOptions): Promise<DatagramSocket>;
  listenUnixDatagram(options: UnixDatagramListenOptions & { systemd: string }): Promise<DatagramSocket>;
  listenUnixDatagram(pathOrOptions: string | (UnixDatagramListenOptions & { systemd: string }), maybeOptions?: UnixDatagramListenOptions): Promise<DatagramSocket> {
    const { path, options } = splitPathArguments(pathOrOptions, maybeOptions);
    return this.#listen(() => unixDatagramRequest(path, options));
  }

  /**
   * Listen on a Unix seqpacket socket (message boundaries kept), or take it over
   * from the previous generation; its connections are SeqpacketSockets.
   *
   * @throws {EcdysisError} as listenUnix().
   * @example
   * const seq = await ecdysis.listenUnixSeqpacket('/run/app/seq.sock');
   * for await (const conn of seq) void (async () => { for await (const m of conn) await conn.send(m); })();
   */
  listenUnixSeqpacket(path: string, options?: UnixSeqpacketListenOptions): Promise<SeqpacketListener>;
  listenUnixSeqpacket(options: UnixSeqpacketListenOptions & { systemd: string }): Promise<SeqpacketListener>;
  listenUnixSeqpacket(pathOrOptions: string | (UnixSeqpacketListenOptions & { systemd: string }), maybeOptions?: UnixSeqpacketListenOptions): Promise<SeqpacketListener> {
    const { path, options } = splitPathArguments(pathOrOptions, maybeOptions);
    return this.#listen(() => unixSeqpacketRequest(path, options));
  }

  /**
   * This generation is initialised: write the PID file, tell the previous
   * generation and wait for its commit, start accepting. Listeners accept only
   * from here on, so a generation that fails before ready() never took a
   * connection. Concurrent and repeated calls share one result; after a
   * rejection (the PID file could not be written) it may be called again.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_STOPPING when this generation is exiting;
   * ERR_ECDYSIS_PID_FILE; ERR_ECDYSIS_COMMIT_TIMEOUT when the previous generation
   * neither committed nor exited within its upgrade timeout (this generation then
   * gives up, leaving the shared sockets to it).
   */
  ready(): Promise<void> {
    switch (this.#phase.state) {
      case 'starting':
        this.#cancelReadyReminder();
        this.#ready = this.#becomeReady();
        return this.#ready;
      case 'committing':
        return this.#ready!;
      case 'ready':
      case 'upgrading':
        return Promise.resolve();
      default:
        return Promise.reject(this.#stoppingError());
    }
  }

  async #becomeReady(): Promise<void> {
    const phase = this.#enter<PhaseOf<'committing'>>({ state: 'committing', deferredStop: undefined });
    // A failure here leaves this generation starting (ready() may be called
    // again). A new generation only checks that it can write the file: until
    // the commit, the file names the generation that serves (a stop meanwhile
    // kills this one and removes the file).
    const link = this.#link;
    const pidFile = this.#options.pidFile;
    try {
      if (pidFile) await (link ? checkPidFileWritable : writePidFile)(pidFile, process.pid, this.#options.pidFileMode);
    } catch (err) {
      this.#ready = undefined;
      this.#enter({ state: 'starting' });
      if (phase.deferredStop) this.#shutdown(phase.deferredStop);
      throw err;
    }
    if (link && this.#receiver) {
      try {
        await this.#receiver.done;
      } catch (err) {
        // Nothing was given up over there: the upgrade fails, the old generation keeps it all.
        await link.sendError('ERR_ECDYSIS_HANDOFF', (err as Error).message);
        this.#ready = undefined;
        this.#enter({ state: 'starting' });
        throw err;
      }
      this.#receiver.release();
    }
    const outcome = link ? await link.sendReady(link.hello.upgradeTimeout ?? this.#options.upgradeTimeout, this.#receiver?.summary) : 'committed';
    if (outcome === 'timeout') {
      // The parent is alive but stuck (stopped, hung): it still holds the sockets
      // and may serve again. Give up without touching them; it takes the service
      // back when it sees this process exit.
      const exit = this.#newExit({ mode: 'stop', reason: 'commit timeout' }, [...this.#listeners.all]);
      this.#enter({ state: 'draining', exit });
      this.#listeners.leave(exit.listeners);
      this.#announceExit(exit);
      this.#startDrain();
      throw new EcdysisError(
        'ERR_ECDYSIS_COMMIT_TIMEOUT',
        `generation ${this.generation - 1} (pid ${link!.hello.parentPid}) neither committed the hand-over nor exited ` +
          `within ${link!.hello.upgradeTimeout ?? this.#options.upgradeTimeout} ms of ready; generation ${this.generation} gives up`,
        { pid: link!.hello.parentPid },
      );
    }
    if (outcome === 'parent-gone') debug('parent gone before it committed; this generation carries on alone');
    // This generation serves from now on (a stop meanwhile waits in deferredStop).
    if (pidFile && link) {
      await writePidFile(pidFile, process.pid, this.#options.pidFileMode).catch((e: Error) => process.emitWarning(`${e.message}; it still names the previous generation`, { code: 'ECDYSIS_PID_FILE' }));
    }
    // Started nicer (niceWhileStarting): the priority of the generation it replaces (the parent gives it back too).
    const nice = link?.hello.nice;
    if (nice !== undefined && ownNice() > nice) trySetNice(0, nice);
    this.#enter({ state: 'ready' });
    if (!this.parentAlive) this.#closeUnclaimed();
    for (const listener of this.#listeners.all) listener.start();
    this.#systemd?.ready(this.generation, this.#registry);
    this.#emit({ type: 'ready' });
    if (this.#options.compileCache) flushCompileCache();
    if (phase.deferredStop) this.#shutdown(phase.deferredStop);
  }

  /**
   * Start the next generation and hand it every listening socket. Resolves with
   * its pid once it is ready (this generation then stops accepting and `exit`
   * resolves); rejects, with this generation still serving, if it fails.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_NOT_READY, ERR_ECDYSIS_UPGRADE_IN_PROGRESS,
   * ERR_ECDYSIS_PARENT_ALIVE, ERR_ECDYSIS_STOPPING (refused); ERR_ECDYSIS_CHILD_EXITED,
   * ERR_ECDYSIS_CHILD_TIMEOUT, ERR_ECDYSIS_CHILD_ERROR, ERR_ECDYSIS_SPAWN_FAILED,
   * ERR_ECDYSIS_PROTOCOL (failed).
   * @example
   * const pid = await ecdysis.upgrade();
   */
  async upgrade(): Promise<number> {
    return this.#upgrade('upgrade()');
  }

  /**
   * Stop: stop accepting (except on listeners with `stopOnShutdown: false`),
   * unlink this generation's Unix socket paths, close the sockets, resolve `exit`
   * with mode 'stop'. An upgrade in flight is abandoned (its child is killed).
   * Connections already accepted are left to drain(). After an upgrade, it means
   * the service is going away: this generation no longer takes it back, and a
   * probation ends at once.
   */
  stop(): void {
    this.#shutdown({ mode: 'stop', reason: 'stop()' });
  }

  /**
   * Like stop(), but the listening sockets stay open and Unix paths stay in place
   * (connections keep queueing) for another process to take over, e.g. a
   * systemd socket unit or a supervisor. `exit` resolves with mode 'partial-stop'.
   */
  partialStop(): void {
    this.#shutdown({ mode: 'partial-stop', reason: 'partialStop()' });
  }

  /**
   * Wait until this generation is done: every connection handed out by its
   * stopped listeners has ended (HTTP connections of served servers close
   * gracefully; the rest is destroyed at the deadline) and, after an upgrade
   * with `probation`, the successor has survived it. May be called at any time;
   * the drain starts when this generation exits. If the successor dies first,
   * this generation serves again and the promise resolves after its next exit.
   * Emits `drained`. Calling it again returns the same result (the first
   * call's options apply); a second stop signal ends the drain at once.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION (as a rejection).
   */
  drain(options: DrainOptions = {}): Promise<DrainResult> {
    try {
      if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
      const timeout = validateInteger(options.timeout ?? 30_000, 'options.timeout', 0, MAX_TIMEOUT_MS);
      const idleTimeout = options.idleTimeout === undefined ? undefined : validateInteger(options.idleTimeout, 'options.idleTimeout', 0, MAX_TIMEOUT_MS);
      this.#drainOptions ??= { timeout, idleTimeout };
    } catch (err) {
      return Promise.reject(err);
    }
    this.#drained ??= deferred();
    this.#startDrain();
    return this.#drained.promise;
  }

  /**
   * The lifecycle as an Observable. A subscriber first receives a `state` event
   * with the current state, then every event from then on; it completes after
   * `drained`.
   *
   * @example
   * ecdysis.events().subscribe((e) => log.info(e.type, e));
   */
  events(): Observable<EcdysisEvent> {
    return this.#events.observable(() => ({ type: 'state', state: this.#phase.state, isChild: this.isChild, parentAlive: this.parentAlive }));
  }

  /**
   * Resolves once the previous generation has exited (at once when there is
   * none). Upgrades are refused until then.
   *
   * @throws the signal's reason when `signal` aborts first.
   */
  waitForParent(options: WaitForParentOptions = {}): Promise<void> {
    const { signal } = options;
    if (!this.#link || !this.#link.parentAlive) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(signal.reason);
    return new Promise((resolve, reject) => {
      const onAbort = () => reject(signal!.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      void this.#link!.parentExited.then(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
    });
  }

  /**
   * Register a handler that hands state, files and live connections to the next
   * generation: called once per upgrade attempt, after the new generation has
   * started and before it is ready. Returns a function that unregisters it.
   *
   * @example
   * ecdysis.onHandoff(async (handoff) => {
   *   handoff.state({ sessions: [...sessions] });
   *   for (const [id, socket] of tunnels) await handoff.socket(id, socket, { meta: { id } });
   * });
   */
  onHandoff(handler: HandoffHandler): () => void {
    if (typeof handler !== 'function') throw invalidOption('handler', 'must be a function', handler);
    this.#handoffHandlers.push(handler);
    return () => {
      const index = this.#handoffHandlers.indexOf(handler);
      if (index !== -1) this.#handoffHandlers.splice(index, 1);
    };
  }

  /**
   * What the previous generation handed over (state, files, live connections),
   * once it all arrived: undefined on a first start. Call it before ready():
   * connections nobody asked for by then are closed.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_HANDOFF (as a rejection) when the hand-over broke off.
   */
  inherited(): Promise<Inherited | undefined> {
    if (!this.#link) return Promise.resolve(undefined);
    if (!this.#receiver) return Promise.resolve({ state: undefined, files: new Map(), sockets: new Map() });
    return this.#receiver.claim();
  }

  /**
   * Messages with the other generation while both run: the previous one while
   * it is alive, else the latest successor (from its start until this process
   * exits). A closed channel when there is none.
   */
  channel(): GenerationChannel {
    if (this.parentAlive && this.#parentChannel?.open) return this.#parentChannel;
    if (this.#successorChannel?.open) return this.#successorChannel;
    return new GenerationChannel(undefined, undefined);
  }

  // --- internals ------------------------------------------------------------

  /** What the control sockets ask of this generation. */
  #controlHandler(): ControlHandler {
    return {
      generation: this.generation,
      upgrade: (reason, answer) => this.#upgrade(reason, answer),
      stop: (mode, reason) => this.#shutdown({ mode, reason }),
      refused: (peer, reason) => this.#emit({ type: 'control-refused', uid: peer.uid, peerPid: peer.pid, reason }),
      status: () => {
        const phase = this.#phase;
        return {
          pid: process.pid,
          generation: this.generation,
          state: phase.state,
          parentAlive: this.parentAlive,
          // A drained parent that still runs is lingering: the application keeps it alive.
          parent: this.parentAlive ? { pid: this.#link!.hello.parentPid, state: this.#link!.drained ? 'drained' : 'draining' } : null,
          upgrade: phase.state === 'upgrading' ? { childPid: phase.child?.pid ?? null } : null,
          listeners: this.#listeners.describe().filter((l) => !l.key.startsWith('control:')),
        };
      },
    };
  }

  #onTrigger(action: TriggerAction, signal: NodeJS.Signals): void {
    debug('%s received: %s', signal, action);
    if (action === 'upgrade') {
      this.#upgrade(signal).catch(() => {
        // Reported through events() ('refused' or 'child-failed'); a signal has nobody to reject to.
      });
      return;
    }
    const phase = this.#phase;
    if (phase.state === 'stopping' || phase.state === 'draining' || phase.state === 'probation' || phase.state === 'drained') {
      // Already exiting: the stop signal that began it (or, after an upgrade, the
      // first one) only says the service is going away; the next one ends the
      // drain now and steps aside, so that one more gets the default action.
      const { exit } = phase;
      exit.stopRequested = true;
      exit.stopSignals++;
      if (exit.stopSignals >= (exit.info.mode === 'upgrade' ? 2 : 1)) {
        exit.forced = true;
        this.#drain?.force();
        this.#removeSignals(['stop', 'partial-stop']);
      }
      if (phase.state === 'probation') this.#finish(phase, phase.result);
      return;
    }
    this.#shutdown({ mode: action, reason: signal });
  }

  /**
   * `answer` is called with the new pid at the commit, before `exit` resolves:
   * a caller that owes someone the outcome (a control-socket client) writes it
   * there, since the application may exit on the next line after the drain.
   */
  async #upgrade(reason: string, answer?: (pid: number) => void): Promise<number> {
    const refusal = this.#upgradeRefusal();
    if (refusal) {
      this.#emit({ type: 'refused', reason, error: refusal });
      throw refusal;
    }
    // A parent still in its probation would take the service back if this
    // generation died: from now on the next one is this generation's to watch.
    if (this.#link?.drained && this.parentAlive) this.#link.release('upgrade');
    const startedAt = performance.now();
    const handlers = [...this.#handoffHandlers];
    const handoff = handlers.length === 0 ? undefined : { sender: new HandoffSender(this.generation + 1, this.#options.maxHandoffBytes), sent: undefined, skipped: false };
    const phase = this.#enter<PhaseOf<'upgrading'>>({ state: 'upgrading', reason, startedAt, child: undefined, handoff });
    this.#systemd?.upgrading(this.generation, this.#options.upgradeTimeout);
    this.#emit({ type: 'requested', reason });
    const generation = this.generation + 1;
    let child: CommittedChild;
    try {
      const [command, draining] = await Promise.all([this.#resolveCommand(), this.#draining.chainForChild(this.#retireHandler())]);
      if (this.#phase !== phase) throw this.#stoppingError();
      const { fds, sockets } = this.#registry.handoff();
      phase.child = spawnGeneration({
        command,
        generation,
        fds,
        sockets,
        timeoutMs: this.#options.upgradeTimeout,
        handoff: handoff !== undefined,
        ...(draining ? { draining, beforeCommit: () => this.#makeRoom() } : {}),
        ...this.#startingNice(),
        onSpawn: (childPid) => this.#emit({ type: 'child-spawned', childPid }),
        commit: (ready, frame) => this.#commit(phase, ready, frame),
      });
      const pending = phase.child;
      const successor = new GenerationChannel(pending.channel, 'successor');
      this.#successorChannel = successor;
      pending.channel?.receive((frame) => void successor.take(frame), () => successor.end());
      if (handoff) void this.#handOver(pending, handoff, handlers);
      child = await pending.ready;
    } catch (err) {
      const error = err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', (err as Error).message, { cause: err });
      // Whatever the handlers gave stays here: moved connections resume where they stopped.
      handoff?.sender.abort();
      if (this.#phase === phase) {
        this.#enter({ state: 'ready' });
        // A child that stopped itself before it was ready must not have touched the
        // shared sockets, but make sure no SYN filter survives it.
        this.#registry.readmitAll();
        // The child may have written its pid before failing: the PID file is ours again.
        this.#rewritePidFile();
        this.#systemd?.upgradeFailed(this.generation, error.code);
      }
      this.#emit({ type: 'child-failed', error, elapsedMs: performance.now() - startedAt, ...(handoff?.sender.started ? { handoff: 'kept' as const } : {}) });
      throw error;
    }
    // #commit() moved this generation to 'draining' when the child reported ready.
    const elapsedMs = performance.now() - startedAt;
    debug('generation %d (pid %d) ready after %d ms', generation, child.pid, Math.round(elapsedMs));
    this.#emit({ type: 'child-ready', childPid: child.pid, elapsedMs });
    answer?.(child.pid);
    const current = this.#phase as Phase;
    if (current.state === 'draining' && current.exit.successor === child) {
      this.#announceExit(current.exit);
      this.#startDrain();
    }
    return child.pid;
  }

  /** niceWhileStarting, when this process may give the successor its priority back. */
  #startingNice(): { nice?: { starting: number; ready: number } } {
    const more = this.#options.niceWhileStarting;
    if (more === 0) return {};
    const own = ownNice();
    return canRestoreNice(own) ? { nice: { starting: own + more, ready: own } } : {};
  }

  /**
   * The child is ready: commit, in the same step as the state changes, so that
   * nothing can run in between (a subscriber calling stop() sees 'draining' and
   * never touches the sockets the successor now owns). Returns false when this
   * generation is no longer upgrading (a stop came first).
   */
  #commit(phase: PhaseOf<'upgrading'>, child: CommittedChild, ready: ReadyFrame): EcdysisError | undefined {
    if (this.#phase !== phase) return new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is shutting down; the upgrade was abandoned`);
    const handoff = phase.handoff;
    if (handoff && child.protocol < HANDOFF_PROTOCOL_VERSION) {
      handoff.skipped = true;
    } else if (handoff && !sameSummary(handoff.sent, ready.handoff)) {
      return new EcdysisError(
        'ERR_ECDYSIS_HANDOFF',
        `generation ${this.generation + 1} reports receiving ${JSON.stringify(ready.handoff ?? null)} of the hand-over, not ${JSON.stringify(handoff.sent ?? null)}`,
      );
    }
    const exit = this.#newExit({ mode: 'upgrade', reason: phase.reason, successor: child.pid }, [...this.#listeners.all]);
    exit.successor = child;
    this.#enter({ state: 'draining', exit });
    for (const listener of exit.listeners) listener.pause();
    if (handoff?.skipped) handoff.sender.abort();
    else handoff?.sender.commit();
    this.#systemd?.committed(this.generation, child.pid);
    // Our own parent, if it still watches us, must not take the service back when we exit.
    this.#link?.release('upgrade');
    void child.ended.then((end) => this.#onSuccessorEnded(child, end));
    void child.released.then(() => this.#onSuccessorReleased(child));
    if (handoff?.skipped) {
      queueMicrotask(() =>
        this.#emit({ type: 'handoff-skipped', reason: `generation ${this.generation + 1} speaks protocol ${child.protocol}, without hand-over: this generation kept its state and connections` }),
      );
    }
    return undefined;
  }

  /**
   * Run the onHandoff handlers once the child reads the hand-over channel, then
   * send. A failure kills the child: the upgrade fails and nothing is given up.
   */
  async #handOver(pending: PendingChild, handoff: OutgoingHandoff, handlers: HandoffHandler[]): Promise<void> {
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
  async #makeRoom(): Promise<void> {
    for (const { ancestor, drained, elapsedMs } of await this.#draining.makeRoom()) {
      debug('generation %d (pid %d) told to finish: %s after %d ms', ancestor.generation, ancestor.pid, drained ? 'drained' : 'no answer', Math.round(elapsedMs));
      this.#emit({ type: 'ancestor-retired', ancestorGeneration: ancestor.generation, ancestorPid: ancestor.pid, drained, elapsedMs });
    }
  }

  /** What this generation's retire endpoint answers its descendants. */
  #retireHandler(): RetireHandler {
    return {
      state: () => this.#phase.state,
      finish: (peer) => {
        const phase = this.#phase;
        if ((phase.state !== 'draining' && phase.state !== 'probation') || phase.exit.info.mode !== 'upgrade') return false;
        debug('told to finish by pid %d', peer.pid);
        this.#emit({ type: 'retire-requested', requestedBy: peer.pid });
        // The deadline is now: what still runs is cut, and the service is never taken back.
        const { exit } = phase;
        exit.stopRequested = true;
        exit.forced = true;
        this.#drain?.force();
        if (phase.state === 'probation') this.#finish(phase, phase.result);
        return true;
      },
    };
  }

  /** The successor ends on purpose, or upgrades: a probation has nothing left to watch. */
  #onSuccessorReleased(child: CommittedChild): void {
    const phase = this.#phase;
    if (phase.state === 'probation' && phase.exit.successor === child) this.#finish(phase, phase.result);
  }

  /** The successor exited while this generation is still alive. */
  #onSuccessorEnded(child: CommittedChild, end: SuccessorEnd): void {
    const phase = this.#phase;
    if ((phase.state !== 'draining' && phase.state !== 'probation') || phase.exit.successor !== child) return;
    phase.exit.successor = undefined;
    if (end.released || !child.watchable || phase.exit.stopRequested) {
      debug('successor %d exited (%s)', child.pid, end.released ? `released: ${end.released}` : 'not watched');
      if (phase.state === 'probation') this.#finish(phase, phase.result);
      return;
    }
    // It died without a word: take the service back. Its accepted connections
    // are lost with it; everything still queued is accepted here.
    this.#drain?.cancel();
    this.#drain = undefined;
    if (phase.state === 'probation') clearTimeout(phase.timer);
    this.#enter({ state: 'ready' });
    this.#abort = new AbortController();
    this.#exit = deferred();
    this.#registry.readmitAll();
    for (const listener of phase.exit.listeners) listener.resume();
    this.#rewritePidFile();
    this.#systemd?.tookBack(this.generation, this.#registry);
    const how = end.signal ? `signal ${end.signal}` : `code ${end.exitCode}`;
    const error = new EcdysisError(
      'ERR_ECDYSIS_SUCCESSOR_FAILED',
      `generation ${this.generation + 1} (pid ${child.pid}) exited (${how}) after it took over; generation ${this.generation} serves again`,
      { pid: child.pid, exitCode: end.exitCode, signal: end.signal },
    );
    debug('%s', error.message);
    this.#emit({ type: 'successor-failed', childPid: child.pid, exitCode: end.exitCode, signal: end.signal, error });
  }

  #upgradeRefusal(): EcdysisError | undefined {
    switch (this.#phase.state) {
      case 'starting':
      case 'committing':
        return new EcdysisError('ERR_ECDYSIS_NOT_READY', `generation ${this.generation} cannot upgrade before ready()`);
      case 'upgrading':
        return new EcdysisError('ERR_ECDYSIS_UPGRADE_IN_PROGRESS', `generation ${this.generation} is already upgrading`);
      case 'ready':
        break;
      default:
        return this.#stoppingError();
    }
    const parentPid = this.#link?.hello.parentPid;
    // A parent that said its drain is over holds nothing back, even if the application keeps it running.
    if (this.parentAlive && !this.#link!.drained && !this.#draining.knows(parentPid!)) {
      // With maxDrainingGenerations > 1 a draining parent is no obstacle, if it can be told to finish.
      const why = this.#options.maxDrainingGenerations > 1 ? ' and did not name a retire endpoint (an older release)' : ' (maxDrainingGenerations is 1)';
      return new EcdysisError(
        'ERR_ECDYSIS_PARENT_ALIVE',
        `generation ${this.generation} cannot upgrade while generation ${this.generation - 1} (pid ${parentPid}) is still running${why}`,
        { pid: parentPid },
      );
    }
    return undefined;
  }

  async #resolveCommand(): Promise<SpawnCommand> {
    const option = this.#options.command;
    const base = defaultCommand();
    const command = option === undefined ? base : { ...base, ...(typeof option === 'function' ? validateCommand(await option(), 'options.command()') : option) };
    const cache = this.#options.compileCache;
    if (cache && command.env.NODE_COMPILE_CACHE === undefined) return { ...command, env: { ...command.env, NODE_COMPILE_CACHE: cache } };
    return command;
  }

  #shutdown(request: StopRequest): void {
    const phase = this.#phase;
    switch (phase.state) {
      case 'committing':
        // Ready was sent and the parent may be committing right now: whether this
        // generation owns the service is known only once it answers.
        phase.deferredStop ??= request;
        return;
      case 'stopping':
      case 'drained':
        return;
      case 'draining':
      case 'probation':
        phase.exit.stopRequested = true;
        if (phase.state === 'probation') this.#finish(phase, phase.result);
        return;
      case 'upgrading':
        phase.child?.abort(this.#stoppingError());
        break;
    }
    // Before ready, while the parent still serves, the sockets are the parent's
    // too: stopping this generation must leave them, and their paths, exactly as
    // they are, for every listener (stopOnShutdown: false ones included).
    const parentServes = phase.state === 'starting' && this.parentAlive;
    const exit = this.#newExit(request, parentServes ? [...this.#listeners.all] : this.#listeners.all.filter((l) => l.stopOnShutdown));
    // A parent still watching us must not take the service back: this end is on purpose.
    if (phase.state !== 'starting') this.#link?.release(request.mode);
    // A generation whose parent still serves is not the main process: systemd is not told.
    if (!parentServes) this.#systemd?.stopping();
    if (request.mode === 'partial-stop' || parentServes) {
      this.#enter({ state: 'draining', exit });
      if (parentServes) this.#listeners.leave(exit.listeners);
      else for (const listener of exit.listeners) listener.stop();
      this.#announceExit(exit);
      this.#startDrain();
      return;
    }
    this.#enter({ state: 'stopping', exit });
    for (const listener of exit.listeners) listener.prepareStop();
    if (this.#options.pidFile) void removePidFileIfOwned(this.#options.pidFile);
    void this.#listeners.closeForGood(exit.listeners).finally(() => {
      this.#enter({ state: 'draining', exit });
      this.#announceExit(exit);
      this.#startDrain();
    });
  }

  #newExit(info: ExitInfo, listeners: Listener[]): Exit {
    return { info, listeners, successor: undefined, stopRequested: info.mode !== 'upgrade', stopSignals: 0, forced: false };
  }

  /** Once the exiting listeners no longer accept: abort `signal`, emit `exiting`, resolve `exit`. */
  #announceExit(exit: Exit): void {
    const { info } = exit;
    this.#abort.abort(new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is exiting (${info.mode}: ${info.reason})`));
    this.#emit({ type: 'exiting', mode: info.mode, reason: info.reason });
    this.#exit.resolve(info);
  }

  /** Drain once this generation is draining and drain() has been called. */
  #startDrain(): void {
    const phase = this.#phase;
    const options = this.#drainOptions;
    if (phase.state !== 'draining' || !options || this.#drain) return;
    const { exit } = phase;
    const sockets = exit.listeners.flatMap((l) => l.activeConnections());
    // Accepted, but no consumer was left to take them: destroyed when the
    // listener stopped (later ones are among `sockets`, counted by the drain).
    const discarded = exit.listeners.reduce((sum, l) => sum + l.discarded, 0);
    const handle = drainSockets(sockets, { timeout: options.timeout, ...(options.idleTimeout === undefined ? {} : { idleTimeout: options.idleTimeout }) });
    // A stopping main process tells systemd how long its drain may take; after an upgrade it is not main any more.
    if (exit.info.mode !== 'upgrade') this.#systemd?.draining(options.timeout);
    this.#drain = handle;
    if (exit.forced) handle.force();
    void handle.result.then((result) => {
      if (this.#drain !== handle || this.#phase !== phase) return; // cancelled: the service was taken back
      this.#drain = undefined;
      result.connections += discarded;
      result.destroyed += discarded;
      debug('drained: %o', result);
      const successor = exit.successor;
      if (successor?.watchable && !exit.stopRequested && this.#options.probation > 0) {
        // Idle, but alive and still watching: a successor that dies now costs nothing.
        const timer = setTimeout(() => {
          if (this.#phase.state === 'probation' && this.#phase.exit === exit) this.#finish(this.#phase, result);
        }, this.#options.probation);
        this.#enter({ state: 'probation', exit, result, timer });
        successor.drained();
        return;
      }
      this.#finish(phase, result);
    });
  }

  /** The generation is done: stop what still accepts, complete every stream, resolve drain(). */
  #finish(phase: Phase & { exit: Exit }, result: DrainResult): void {
    if (this.#phase !== phase) return;
    if (phase.state === 'probation') clearTimeout(phase.timer);
    const { exit } = phase;
    exit.successor?.drained();
    exit.successor?.forget();
    exit.successor = undefined;
    // The generation's life is over: listeners kept through the stop
    // (stopOnShutdown: false) stop now, so nothing holds the process open.
    const remaining = this.#listeners.all.filter((l) => !l.stopped);
    const closing = exit.info.mode === 'stop' ? this.#listeners.closeForGood(remaining) : Promise.resolve(remaining.forEach((l) => l.stop()));
    void closing.then(() => {
      for (const listener of this.#listeners.all) listener.dispose();
      this.#systemd?.done();
      this.#enter({ state: 'drained', exit });
      this.#draining.close();
      this.#emit({ type: 'drained', result });
      this.#events.complete();
      this.#drained?.resolve(result);
      warnIfLingering(this.generation);
    });
  }

  /**
   * Inherited sockets no listener asked for are closed once this generation is
   * ready and its parent is gone: a listener created after ready() still gets
   * its socket while the parent drains.
   */
  #closeUnclaimed(): void {
    const unused = this.#registry.closeUnclaimed();
    if (unused.length > 0) debug('closed unused inherited sockets: %s', unused.join(', '));
  }

  #rewritePidFile(): void {
    if (!this.#options.pidFile) return;
    writePidFile(this.#options.pidFile, process.pid, this.#options.pidFileMode).catch((e: Error) => debug('pid file: %s', e.message));
  }

  /** Every listen method: the kind validates the request, the listener set carries it out. */
  async #listen<L extends Listener>(prepare: () => Promise<ListenRequest<L>>): Promise<L> {
    this.#assertCanListen();
    const request = await prepare();
    this.#assertCanListen();
    const listener = await this.#listeners.add(request, () => this.#assertCanListen());
    if (this.#phase.state === 'ready') listener.start();
    return listener;
  }

  #assertCanListen(): void {
    const { state } = this.#phase;
    if (state !== 'starting' && state !== 'committing' && state !== 'ready' && state !== 'upgrading') throw this.#stoppingError();
    if (state === 'upgrading') {
      throw new EcdysisError(
        'ERR_ECDYSIS_UPGRADE_IN_PROGRESS',
        'cannot add a listener while an upgrade is in flight: the next generation would not get it',
      );
    }
  }

  #stoppingError(): EcdysisError {
    return new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is shutting down`);
  }

  /** The one way the state changes. */
  #enter<P extends Phase>(next: P): P {
    const from = this.#phase.state;
    if (!TRANSITIONS[from].includes(next.state)) {
      throw new Error(`ecdysis: internal error: no transition from ${from} to ${next.state}`);
    }
    debug('state %s -> %s', from, next.state);
    this.#phase = next;
    return next;
  }

  #emit(payload: EventPayload): void {
    this.#events.emit(payload);
  }
}

function sameSummary(a: HandoffSummary | undefined, b: HandoffSummary | undefined): boolean {
  return a !== undefined && b !== undefined && a.state === b.state && a.files === b.files && a.sockets === b.sockets;
}

/**
 * The parent has exited (EOF on the control channel) and its hand-over channel
 * is closed too, after everything the parent sent on it was read: from then on
 * this process holds no fd of the parent's. The channel ends with the parent;
 * should some other process still hold the parent's end, it is closed here
 * after a second.
 */
async function parentGone(link: ParentLink): Promise<void> {
  await link.parentExited;
  const channel = link.channel;
  if (!channel || channel.closed) return;
  const fallback = setTimeout(() => channel.close(), 1000);
  fallback.unref();
  await channel.whenClosed;
  clearTimeout(fallback);
}
