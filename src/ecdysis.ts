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
import { channel } from 'node:diagnostics_channel';
import { lookup } from 'node:dns/promises';
import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { connect, isIP } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { debuglog } from 'node:util';
// The Observable class alone: the 'rxjs' entry point loads all of rxjs (about 50 ms
// and 6 MB per process start, i.e. per upgrade). Same module, same class.
import { Observable } from 'rxjs/internal/Observable';
import type { Subscriber } from 'rxjs';
import { EcdysisError, invalidOption } from './errors.ts';
import { connectToParent, type ParentLink } from './internal/child.ts';
import { drainSockets, type DrainHandle, type DrainOptions, type DrainResult } from './internal/drain.ts';
import { native } from './internal/native.ts';
import {
  MAX_TIMEOUT_MS,
  resolveOptions,
  validateBoolean,
  validateCommand,
  validateInteger,
  type EcdysisOptions,
  type ResolvedOptions,
} from './internal/options.ts';
import { defaultCommand, spawnGeneration, type CommittedChild, type PendingChild, type SpawnCommand, type SuccessorEnd } from './internal/parent.ts';
import { checkPidFileDirectory, removePidFileIfOwned, writePidFile } from './internal/pid-file.ts';
import { Registry, type RegistryEntry } from './internal/registry.ts';
import { installSignals, type TriggerAction } from './internal/triggers.ts';
import { TcpListener, type TcpListenOptions } from './listeners/tcp-listener.ts';
import { UnixListener, type UnixListenOptions } from './listeners/unix-listener.ts';
import type { StreamListener } from './listeners/stream-listener.ts';

const debug = debuglog('ecdysis');
const lifecycleChannel = channel('ecdysis:lifecycle');

/**
 * - starting: created, not ready yet.
 * - committing: ready() is under way: PID file written and, for a child, ready
 *   sent to the previous generation, whose commit is awaited.
 * - ready: serving.
 * - upgrading: serving, and the next generation is starting.
 * - stopping: a full stop is closing the listeners (no handshake is refused
 *   half-way, nothing queued is reset).
 * - draining: no longer accepting; connections are draining. After an upgrade
 *   the successor is watched: if it dies, this generation serves again.
 * - probation: drained, idle, still watching the successor (option `probation`).
 * - drained: done; nothing of the library holds the process open.
 */
export type EcdysisState = 'starting' | 'committing' | 'ready' | 'upgrading' | 'stopping' | 'draining' | 'probation' | 'drained';
export type ExitMode = 'upgrade' | 'stop' | 'partial-stop';

/** Every transition the state machine allows; anything else is a bug and throws. */
const TRANSITIONS: { readonly [S in EcdysisState]: readonly EcdysisState[] } = {
  starting: ['committing', 'stopping', 'draining'],
  committing: ['ready', 'starting', 'draining'],
  ready: ['upgrading', 'stopping', 'draining'],
  upgrading: ['ready', 'stopping', 'draining'],
  stopping: ['draining'],
  draining: ['probation', 'drained', 'ready'],
  probation: ['drained', 'ready'],
  drained: [],
};

/** How and why this generation is exiting. */
export interface ExitInfo {
  mode: ExitMode;
  /** What triggered it: a signal name, 'upgrade()', 'stop()'... */
  reason: string;
  /** For an upgrade: the pid of the generation that took over. */
  successor?: number;
}

interface StopRequest {
  mode: 'stop' | 'partial-stop';
  reason: string;
}

/** What an exiting generation remembers, from the moment it stops accepting until it is drained. */
interface Exit {
  info: ExitInfo;
  /** The listeners that stopped (or paused) accepting; their connections are drained. */
  listeners: StreamListener[];
  /** After an upgrade: the successor, watched until it exits or releases this generation. */
  successor: CommittedChild | undefined;
  /** A stop was asked for since: the service is going away, never taken back. */
  stopRequested: boolean;
  /** Stop signals received since. */
  stopSignals: number;
  /** The drain must end at once (a second stop signal), even if it has not started yet. */
  forced: boolean;
}

type Phase =
  | { state: 'starting' }
  | { state: 'committing'; deferredStop: StopRequest | undefined }
  | { state: 'ready' }
  | { state: 'upgrading'; reason: string; startedAt: number; child: PendingChild | undefined }
  | { state: 'stopping'; exit: Exit }
  | { state: 'draining'; exit: Exit }
  | { state: 'probation'; exit: Exit; result: DrainResult; timer: NodeJS.Timeout }
  | { state: 'drained'; exit: Exit };
type PhaseOf<S extends EcdysisState> = Extract<Phase, { state: S }>;

interface EventBase {
  /** Date.now() when the event was emitted. */
  time: number;
  generation: number;
  pid: number;
}

/** The lifecycle, as emitted by {@link Ecdysis.events}. */
export type EcdysisEvent = EventBase &
  (
    | { type: 'state'; state: EcdysisState; isChild: boolean; parentAlive: boolean }
    | { type: 'ready' }
    | { type: 'requested'; reason: string }
    | { type: 'refused'; reason: string; error: EcdysisError }
    | { type: 'child-spawned'; childPid: number }
    | { type: 'child-ready'; childPid: number; elapsedMs: number }
    | { type: 'child-failed'; error: EcdysisError; elapsedMs: number }
    | { type: 'exiting'; mode: ExitMode; reason: string }
    | { type: 'successor-failed'; childPid: number; exitCode: number | null; signal: NodeJS.Signals | null; error: EcdysisError }
    | { type: 'drained'; result: DrainResult }
    | { type: 'parent-exited'; parentPid: number }
  );

type EventPayload = EcdysisEvent extends infer E ? (E extends EcdysisEvent ? Omit<E, keyof EventBase> : never) : never;

export interface WaitForParentOptions {
  signal?: AbortSignal;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

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
  readonly #registry = new Registry();
  readonly #link: ParentLink | undefined;
  readonly #listeners: StreamListener[] = [];
  /** The registry entry behind each listener. */
  readonly #entries = new Map<StreamListener, RegistryEntry>();
  readonly #observers = new Set<Subscriber<EcdysisEvent>>();
  readonly #portZeroCount = new Map<string, number>();
  /** Keys of listeners being created across an await. */
  readonly #reservedKeys = new Set<string>();
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

  private constructor(options: ResolvedOptions, link: ParentLink | undefined) {
    this.#options = options;
    this.#link = link;
    this.isChild = link !== undefined;
    this.generation = link?.hello.generation ?? 0;
    if (link) {
      void link.parentExited.then(() => {
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
    const { default: cluster } = await import('node:cluster');
    if (cluster.isWorker) {
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
    const ecdysis = new Ecdysis(resolved, link);
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
    ecdysis.#removeSignals = installSignals(resolved.signals, (action, signal) => ecdysis.#onTrigger(action, signal));
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

  /** Listeners of this generation, in creation order. */
  get listeners(): readonly StreamListener[] {
    return this.#listeners;
  }

  /**
   * Listen on TCP, or take over the same socket from the previous generation:
   * the same request in the next generation gets the same kernel socket.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION, ERR_ECDYSIS_LISTENER_CONFLICT, ERR_ECDYSIS_STOPPING;
   * system errors such as EADDRINUSE, shaped like Node's.
   * @example
   * const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 8080 });
   */
  async listenTcp(options: TcpListenOptions): Promise<TcpListener> {
    this.#assertCanListen();
    if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
    const port = validateInteger(options.port, 'options.port', 0, 65535);
    const backlog = validateInteger(options.backlog ?? 511, 'options.backlog', 1, 65535);
    const reusePort = validateBoolean(options.reusePort ?? false, 'options.reusePort');
    const ipv6Only = validateBoolean(options.ipv6Only ?? false, 'options.ipv6Only');
    const stopOnShutdown = validateBoolean(options.stopOnShutdown ?? true, 'options.stopOnShutdown');
    const allowHalfOpen = validateBoolean(options.allowHalfOpen ?? false, 'options.allowHalfOpen');
    const requestedHost = options.host ?? '::';
    if (typeof requestedHost !== 'string' || requestedHost === '') throw invalidOption('options.host', 'must be a non-empty string', options.host);
    validateName(options.name);
    // The only await comes first; everything after it happens in one step.
    const host = isIP(requestedHost) ? requestedHost : (await lookup(requestedHost)).address;
    this.#assertCanListen();
    const key = this.#listenerKey(options.name, () => {
      const base = `tcp:${requestedHost.includes(':') ? `[${requestedHost}]` : requestedHost}:${port}`;
      if (port !== 0) return base;
      // Port 0: the nth such request matches the nth one of the previous generation.
      const n = (this.#portZeroCount.get(base) ?? 0) + 1;
      this.#portZeroCount.set(base, n);
      return n === 1 ? base : `${base}#${n}`;
    });
    let entry = this.#registry.claim({ key, kind: 'tcp', host, port });
    if (!entry) {
      let fd: number;
      let boundHost = host;
      try {
        fd = native().listenTcp(host, port, backlog, { reuseAddr: true, reusePort, ipv6Only });
      } catch (err) {
        if (options.host !== undefined || (err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
        boundHost = '0.0.0.0';
        fd = native().listenTcp(boundHost, port, backlog, { reuseAddr: true, reusePort, ipv6Only: false });
      }
      const bound = native().describe(fd);
      entry = { key, kind: 'tcp', fd, host: bound.address ?? boundHost, port: bound.port ?? port, inherited: false };
      this.#registry.add(entry);
    }
    const listener = new TcpListener({
      key,
      fd: entry.fd,
      backlog,
      inherited: entry.inherited,
      stopOnShutdown,
      allowHalfOpen,
      host: entry.host!,
      port: entry.port!,
    });
    return this.#addListener(listener, entry);
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
  async listenUnix(path: string, options: UnixListenOptions = {}): Promise<UnixListener> {
    this.#assertCanListen();
    if (typeof path !== 'string' || path === '' || path === '\0' || path.indexOf('\0', 1) !== -1) {
      throw invalidOption('path', 'must be a filesystem path or an abstract name starting with "\\0"', path);
    }
    if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
    const backlog = validateInteger(options.backlog ?? 511, 'options.backlog', 1, 65535);
    const stopOnShutdown = validateBoolean(options.stopOnShutdown ?? true, 'options.stopOnShutdown');
    const allowHalfOpen = validateBoolean(options.allowHalfOpen ?? false, 'options.allowHalfOpen');
    // Permission bits only: setuid, setgid and sticky mean nothing on a socket and hide mistakes.
    if (options.mode !== undefined) validateInteger(options.mode, 'options.mode', 0, 0o777);
    validateName(options.name);
    const abstract = path.startsWith('\0');
    const fullPath = abstract ? path : resolvePath(path);
    const key = this.#listenerKey(options.name, () => `unix:${abstract ? `@${path.slice(1)}` : fullPath}`);
    // Reserved across the awaits below, so a concurrent call with the same key conflicts.
    this.#reservedKeys.add(key);
    try {
      let entry = this.#registry.claim({ key, kind: 'unix', path: fullPath });
      if (!entry) {
        const fd = await listenUnixReplacingStale(fullPath, backlog);
        let pathInode: number | undefined;
        try {
          if (!abstract) {
            if (options.mode !== undefined) await chmod(fullPath, options.mode);
            pathInode = (await stat(fullPath)).ino;
          }
          this.#assertCanListen(); // the state may have moved on during the awaits
        } catch (err) {
          native().close(fd);
          if (pathInode !== undefined) await unlinkIfSame(fullPath, pathInode);
          throw err;
        }
        entry = { key, kind: 'unix', fd, path: fullPath, inherited: false, ...(pathInode === undefined ? {} : { pathInode }) };
        this.#registry.add(entry);
      }
      const listener = new UnixListener({ key, fd: entry.fd, backlog, inherited: entry.inherited, stopOnShutdown, allowHalfOpen, path: fullPath });
      return this.#addListener(listener, entry);
    } finally {
      this.#reservedKeys.delete(key);
    }
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
    try {
      if (this.#options.pidFile) await writePidFile(this.#options.pidFile, process.pid, this.#options.pidFileMode);
    } catch (err) {
      this.#ready = undefined;
      this.#enter({ state: 'starting' });
      if (phase.deferredStop) this.#shutdown(phase.deferredStop);
      throw err;
    }
    const link = this.#link;
    const outcome = link ? await link.sendReady(link.hello.upgradeTimeout ?? this.#options.upgradeTimeout) : 'committed';
    if (outcome === 'timeout') {
      // The parent is alive but stuck (stopped, hung): it still holds the sockets
      // and may serve again. Give up without touching them; it takes the service
      // back when it sees this process exit.
      const exit = this.#newExit({ mode: 'stop', reason: 'commit timeout' }, [...this.#listeners]);
      this.#enter({ state: 'draining', exit });
      this.#leaveSharedSockets(exit.listeners);
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
    this.#enter({ state: 'ready' });
    if (!this.parentAlive) this.#closeUnclaimed();
    for (const listener of this.#listeners) listener.start();
    this.#emit({ type: 'ready' });
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
    return new Observable<EcdysisEvent>((subscriber) => {
      const { state } = this.#phase;
      subscriber.next(this.#stamp({ type: 'state', state, isChild: this.isChild, parentAlive: this.parentAlive }));
      if (state === 'drained') return subscriber.complete();
      this.#observers.add(subscriber);
      return () => this.#observers.delete(subscriber);
    });
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

  // --- internals ------------------------------------------------------------

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

  async #upgrade(reason: string): Promise<number> {
    const refusal = this.#upgradeRefusal();
    if (refusal) {
      this.#emit({ type: 'refused', reason, error: refusal });
      throw refusal;
    }
    const startedAt = performance.now();
    const phase = this.#enter<PhaseOf<'upgrading'>>({ state: 'upgrading', reason, startedAt, child: undefined });
    this.#emit({ type: 'requested', reason });
    const generation = this.generation + 1;
    let child: CommittedChild;
    try {
      const command = await this.#resolveCommand();
      if (this.#phase !== phase) throw this.#stoppingError();
      const { fds, sockets } = this.#registry.handoff();
      phase.child = spawnGeneration({
        command,
        generation,
        fds,
        sockets,
        timeoutMs: this.#options.upgradeTimeout,
        onSpawn: (childPid) => this.#emit({ type: 'child-spawned', childPid }),
        commit: (ready) => this.#commit(phase, ready),
      });
      child = await phase.child.ready;
    } catch (err) {
      const error = err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', (err as Error).message, { cause: err });
      if (this.#phase === phase) {
        this.#enter({ state: 'ready' });
        // A child that stopped itself before it was ready must not have touched the
        // shared sockets, but make sure no SYN filter survives it.
        this.#registry.acceptNewConnections();
        // The child may have written its pid before failing: the PID file is ours again.
        this.#rewritePidFile();
      }
      this.#emit({ type: 'child-failed', error, elapsedMs: performance.now() - startedAt });
      throw error;
    }
    // #commit() moved this generation to 'draining' when the child reported ready.
    const elapsedMs = performance.now() - startedAt;
    debug('generation %d (pid %d) ready after %d ms', generation, child.pid, Math.round(elapsedMs));
    this.#emit({ type: 'child-ready', childPid: child.pid, elapsedMs });
    const current = this.#phase as Phase;
    if (current.state === 'draining' && current.exit.successor === child) {
      this.#announceExit(current.exit);
      this.#startDrain();
    }
    return child.pid;
  }

  /**
   * The child is ready: commit, in the same step as the state changes, so that
   * nothing can run in between (a subscriber calling stop() sees 'draining' and
   * never touches the sockets the successor now owns). Returns false when this
   * generation is no longer upgrading (a stop came first).
   */
  #commit(phase: PhaseOf<'upgrading'>, child: CommittedChild): boolean {
    if (this.#phase !== phase) return false;
    const exit = this.#newExit({ mode: 'upgrade', reason: phase.reason, successor: child.pid }, [...this.#listeners]);
    exit.successor = child;
    this.#enter({ state: 'draining', exit });
    for (const listener of exit.listeners) listener.pause();
    // Our own parent, if it still watches us, must not take the service back when we exit.
    this.#link?.release('upgrade');
    void child.ended.then((end) => this.#onSuccessorEnded(child, end));
    return true;
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
    this.#registry.acceptNewConnections();
    for (const listener of phase.exit.listeners) listener.resume();
    this.#rewritePidFile();
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
    if (this.parentAlive) {
      return new EcdysisError(
        'ERR_ECDYSIS_PARENT_ALIVE',
        `generation ${this.generation} cannot upgrade while generation ${this.generation - 1} (pid ${this.#link!.hello.parentPid}) is still running`,
        { pid: this.#link!.hello.parentPid },
      );
    }
    return undefined;
  }

  async #resolveCommand(): Promise<SpawnCommand> {
    const option = this.#options.command;
    const base = defaultCommand();
    if (option === undefined) return base;
    const override = typeof option === 'function' ? validateCommand(await option(), 'options.command()') : option;
    return { ...base, ...override };
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
    const exit = this.#newExit(request, parentServes ? [...this.#listeners] : this.#listeners.filter((l) => l.stopOnShutdown));
    // A parent still watching us must not take the service back: this end is on purpose.
    if (phase.state !== 'starting') this.#link?.release(request.mode);
    if (request.mode === 'partial-stop' || parentServes) {
      this.#enter({ state: 'draining', exit });
      if (parentServes) this.#leaveSharedSockets(exit.listeners);
      else for (const listener of exit.listeners) listener.stop();
      this.#announceExit(exit);
      this.#startDrain();
      return;
    }
    this.#enter({ state: 'stopping', exit });
    for (const listener of exit.listeners) listener.prepareStop();
    if (this.#options.pidFile) void removePidFileIfOwned(this.#options.pidFile);
    void this.#closeForGood(exit.listeners).finally(() => {
      this.#enter({ state: 'draining', exit });
      this.#announceExit(exit);
      this.#startDrain();
    });
  }

  /** Stop these listeners and close this process's own fds, leaving the sockets and paths to the parent. */
  #leaveSharedSockets(listeners: StreamListener[]): void {
    for (const listener of listeners) {
      listener.stop();
      this.#registry.remove(listener.key);
    }
    this.#registry.closeUnclaimed();
  }

  /**
   * A full stop closes the sockets. Closing a listener resets every connection
   * still in its accept queue, including ones that already sent a request, so
   * first make the kernel stop completing handshakes (TCP: a filter that drops
   * SYNs, so clients see a clean refusal) or stop new connects (Unix: unlink the
   * path), keep accepting until the queue is empty, then close.
   */
  async #closeForGood(listeners: StreamListener[]): Promise<void> {
    const queues: number[] = [];
    for (const listener of listeners) {
      const entry = this.#entries.get(listener)!;
      if (entry.kind === 'tcp') {
        try {
          native().refuseNewConnections(entry.fd);
          if (listener.accepting) queues.push(entry.fd);
        } catch (err) {
          debug('refuseNewConnections %s: %s', entry.key, (err as Error).message);
        }
      } else if (entry.path && entry.pathInode !== undefined) {
        await unlinkIfSame(entry.path, entry.pathInode);
      }
    }
    // Only a listener somebody accepts on can empty its queue.
    if (listeners.some((l) => l.accepting)) await waitForEmptyAcceptQueues(queues);
    for (const listener of listeners) {
      listener.stop();
      this.#registry.remove(listener.key);
    }
  }

  #newExit(info: ExitInfo, listeners: StreamListener[]): Exit {
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
    const sockets = exit.listeners.flatMap((l) => l.activeSockets());
    // Accepted, but no consumer was left to take them: destroyed when the
    // listener stopped (later ones are among `sockets`, counted by the drain).
    const discarded = exit.listeners.reduce((sum, l) => sum + l.discarded, 0);
    const handle = drainSockets(sockets, { timeout: options.timeout, ...(options.idleTimeout === undefined ? {} : { idleTimeout: options.idleTimeout }) });
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
    exit.successor?.forget();
    exit.successor = undefined;
    // The generation's life is over: listeners kept through the stop
    // (stopOnShutdown: false) stop now, so nothing holds the process open.
    const remaining = this.#listeners.filter((l) => !l.stopped);
    const closing = exit.info.mode === 'stop' ? this.#closeForGood(remaining) : Promise.resolve(remaining.forEach((l) => l.stop()));
    void closing.then(() => {
      this.#enter({ state: 'drained', exit });
      this.#emit({ type: 'drained', result });
      for (const observer of [...this.#observers]) observer.complete();
      this.#observers.clear();
      this.#drained?.resolve(result);
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

  #addListener<T extends StreamListener>(listener: T, entry: RegistryEntry): T {
    this.#listeners.push(listener);
    this.#entries.set(listener, entry);
    if (this.#phase.state === 'ready') listener.start();
    return listener;
  }

  #listenerKey(name: string | undefined, derive: () => string): string {
    const key = name === undefined ? derive() : `name:${name}`;
    if (this.#registry.has(key) || this.#reservedKeys.has(key) || this.#listeners.some((l) => l.key === key)) {
      throw new EcdysisError('ERR_ECDYSIS_LISTENER_CONFLICT', `a listener "${key}" already exists in this generation`);
    }
    return key;
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

  #stamp(payload: EventPayload): EcdysisEvent {
    return { ...payload, time: Date.now(), generation: this.generation, pid: process.pid } as EcdysisEvent;
  }

  #emit(payload: EventPayload): void {
    const event = this.#stamp(payload);
    if (lifecycleChannel.hasSubscribers) lifecycleChannel.publish(event);
    for (const observer of [...this.#observers]) observer.next(event);
  }
}

function validateName(name: unknown): asserts name is string | undefined {
  if (name !== undefined && (typeof name !== 'string' || name === '')) throw invalidOption('options.name', 'must be a non-empty string', name);
}

/** Handshakes already under way when SYNs start being dropped finish within a round trip. */
const HANDSHAKE_GRACE_MS = 100;
const QUEUE_DRAIN_LIMIT_MS = 2_000;

async function waitForEmptyAcceptQueues(fds: number[]): Promise<void> {
  const started = performance.now();
  let emptyPolls = 0;
  while (performance.now() - started < QUEUE_DRAIN_LIMIT_MS) {
    await new Promise((r) => setTimeout(r, 10));
    const queued = fds.reduce((sum, fd) => {
      try {
        return sum + native().acceptQueueLength(fd);
      } catch {
        return sum;
      }
    }, 0);
    emptyPolls = queued === 0 ? emptyPolls + 1 : 0;
    if (emptyPolls >= 2 && performance.now() - started >= HANDSHAKE_GRACE_MS) return;
  }
}

/** Bind a Unix path; a leftover socket file nobody listens on is replaced. */
async function listenUnixReplacingStale(path: string, backlog: number): Promise<number> {
  try {
    return native().listenUnix(path, backlog);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || path.startsWith('\0')) throw err;
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isSocket() || !(await isStale(path))) throw err;
    await unlink(path).catch(() => {});
    return native().listenUnix(path, backlog);
  }
}

function isStale(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

async function unlinkIfSame(path: string, inode: number): Promise<void> {
  try {
    if ((await lstat(path)).ino === inode) await unlink(path);
  } catch {
    // Gone already, or not ours any more.
  }
}
