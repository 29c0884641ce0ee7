/**
 * Ecdysis: the options, the one state machine, the public methods.
 *
 *   starting --ready()--> ready --upgrade()--> upgrading --child ready--> exiting --drain()--> drained
 *       |                   ^                      |                        ^
 *       |                   +----child failed------+                        |
 *       +-------------------+-------stop() / partial stop-------------------+
 *
 * Every transition goes through #setState(); every public method checks the state
 * first and fails fast with a coded error.
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
import { resolveOptions, validateBoolean, validateCommand, validateInteger, type EcdysisOptions, type ResolvedOptions } from './internal/options.ts';
import { defaultCommand, spawnGeneration, type PendingChild, type SpawnCommand } from './internal/parent.ts';
import { removePidFileIfOwned, writePidFile } from './internal/pid-file.ts';
import { Registry, type RegistryEntry } from './internal/registry.ts';
import { installSignals, type TriggerAction } from './internal/triggers.ts';
import { TcpListener, type TcpListenOptions } from './listeners/tcp-listener.ts';
import { UnixListener, type UnixListenOptions } from './listeners/unix-listener.ts';
import type { StreamListener } from './listeners/stream-listener.ts';

const debug = debuglog('ecdysis');
const lifecycleChannel = channel('ecdysis:lifecycle');

export type EcdysisState = 'starting' | 'ready' | 'upgrading' | 'exiting' | 'drained';
export type ExitMode = 'upgrade' | 'stop' | 'partial-stop';

/** How and why this generation is exiting. */
export interface ExitInfo {
  mode: ExitMode;
  /** What triggered it: a signal name, 'upgrade()', 'stop()'... */
  reason: string;
  /** For an upgrade: the pid of the generation that took over. */
  successor?: number;
}

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
    | { type: 'drained'; result: DrainResult }
    | { type: 'parent-exited'; parentPid: number }
  );

type EventPayload = EcdysisEvent extends infer E ? (E extends EcdysisEvent ? Omit<E, keyof EventBase> : never) : never;

export interface WaitForParentOptions {
  signal?: AbortSignal;
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
  /** Resolves when this generation starts exiting (after a successful upgrade, or a stop). */
  readonly exit: Promise<ExitInfo>;
  /** Aborted when this generation starts shutting down; its reason is an EcdysisError. */
  readonly signal: AbortSignal;

  readonly #options: ResolvedOptions;
  readonly #registry = new Registry();
  readonly #link: ParentLink | undefined;
  readonly #listeners: StreamListener[] = [];
  /** The registry entry behind each listener. */
  readonly #entries = new Map<StreamListener, RegistryEntry>();
  /** Listeners this generation stops accepting on as it exits. */
  #stopping: StreamListener[] = [];
  /** Resolves once every stopping listener has stopped accepting. */
  #closing: Promise<void> = Promise.resolve();
  readonly #observers = new Set<Subscriber<EcdysisEvent>>();
  readonly #abort = new AbortController();
  readonly #portZeroCount = new Map<string, number>();
  /** Keys of listeners being created across an await. */
  readonly #reservedKeys = new Set<string>();
  /** Stop signals received while exiting. */
  #stopSignals = 0;
  /** A forced end was asked for before drain() started. */
  #forced = false;
  /** ready() in progress (one for every caller). */
  #ready: Promise<void> | undefined;
  /** Ready sent to the parent, its commit (or its exit) awaited. */
  #handover: Promise<'committed' | 'parent-gone'> | undefined;
  /** A stop that arrived during the hand-over, carried out once it is settled. */
  #deferredStop: { mode: 'stop' | 'partial-stop'; reason: string } | undefined;
  #state: EcdysisState = 'starting';
  #resolveExit!: (info: ExitInfo) => void;
  #exitInfo: ExitInfo | undefined;
  #pending: PendingChild | undefined;
  #drain: DrainHandle | undefined;
  #drainResult: Promise<DrainResult> | undefined;
  #removeSignals: () => void = () => {};

  private constructor(options: ResolvedOptions, link: ParentLink | undefined) {
    this.#options = options;
    this.#link = link;
    this.isChild = link !== undefined;
    this.generation = link?.hello.generation ?? 0;
    this.signal = this.#abort.signal;
    this.exit = new Promise((resolve) => (this.#resolveExit = resolve));
    if (link) {
      void link.parentExited.then(() => this.#emit({ type: 'parent-exited', parentPid: link.hello.parentPid }));
    }
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
    return this.#state;
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
    if (options.mode !== undefined) validateInteger(options.mode, 'options.mode', 0, 0o7777);
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
   * This generation is initialised: close inherited sockets nobody asked for,
   * write the PID file, tell the previous generation, start accepting.
   * Listeners accept only from here on, so a generation that fails before
   * ready() never took a connection. Idempotent.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_STOPPING when this generation is already exiting.
   */
  ready(): Promise<void> {
    if (this.#state === 'exiting' || this.#state === 'drained') return Promise.reject(this.#stoppingError());
    this.#ready ??= this.#becomeReady();
    return this.#ready;
  }

  async #becomeReady(): Promise<void> {
    const unused = this.#registry.closeUnclaimed();
    if (unused.length > 0) debug('closed unused inherited sockets: %s', unused.join(', '));
    if (this.#options.pidFile) await writePidFile(this.#options.pidFile);
    if (this.#state !== 'starting') throw this.#stoppingError();
    if (this.#link) {
      // From here the parent may commit the hand-over: a stop arriving meanwhile
      // waits for the outcome (see #shutdown), so a committed service is never dropped.
      this.#handover = this.#link.sendReady();
      const outcome = await this.#handover;
      this.#handover = undefined;
      if (outcome === 'parent-gone') debug('parent gone before it committed; this generation carries on alone');
    }
    this.#setState('ready');
    for (const listener of this.#listeners) listener.start();
    this.#emit({ type: 'ready' });
    const deferred = this.#deferredStop;
    this.#deferredStop = undefined;
    if (deferred) this.#shutdown(deferred.mode, deferred.reason);
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
   * Connections already accepted are left to drain().
   */
  stop(): void {
    this.#shutdown('stop', 'stop()');
  }

  /**
   * Like stop(), but the listening sockets stay open and Unix paths stay in place
   * (connections keep queueing) for another process to take over, e.g. a
   * systemd socket unit or a supervisor. `exit` resolves with mode 'partial-stop'.
   */
  partialStop(): void {
    this.#shutdown('partial-stop', 'partialStop()');
  }

  /**
   * Wait until every connection handed out by this generation's stopped
   * listeners has ended (waiting first for `exit` when called earlier). HTTP
   * connections of served servers close gracefully; the rest is destroyed at the
   * deadline. Emits `drained`. Calling it again returns the same result; a
   * second stop signal during a drain ends it at once.
   */
  drain(options: DrainOptions = {}): Promise<DrainResult> {
    if (typeof options !== 'object' || options === null) throw invalidOption('options', 'must be an object', options);
    const timeout = validateInteger(options.timeout ?? 30_000, 'options.timeout', 0, 2_147_483_647);
    const idleTimeout = options.idleTimeout === undefined ? undefined : validateInteger(options.idleTimeout, 'options.idleTimeout', 0, 2_147_483_647);
    this.#drainResult ??= this.exit.then(async () => {
      await this.#closing;
      const sockets = this.#stopping.flatMap((l) => l.activeSockets());
      // Accepted, but no consumer was left to take them: destroyed when the
      // listener stopped (later ones are among `sockets`, counted by the drain).
      const discarded = this.#stopping.reduce((sum, l) => sum + l.discarded, 0);
      this.#drain = drainSockets(sockets, { timeout, ...(idleTimeout === undefined ? {} : { idleTimeout }) });
      if (this.#forced) this.#drain.force();
      const result = await this.#drain.result;
      result.connections += discarded;
      result.destroyed += discarded;
      // The generation's life is over: listeners kept through the stop
      // (stopOnShutdown: false) stop now, so nothing holds the process open.
      const remaining = this.#listeners.filter((l) => !l.stopped);
      if (this.#exitInfo?.mode === 'stop') await this.#closeForGood(remaining);
      else for (const listener of remaining) listener.stop();
      this.#setState('drained');
      this.#emit({ type: 'drained', result });
      debug('drained: %o', result);
      this.#removeSignals();
      for (const observer of [...this.#observers]) observer.complete();
      this.#observers.clear();
      return result;
    });
    return this.#drainResult;
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
      subscriber.next(this.#stamp({ type: 'state', state: this.#state, isChild: this.isChild, parentAlive: this.parentAlive }));
      if (this.#state === 'drained') return subscriber.complete();
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
    if (this.#state === 'exiting' || this.#state === 'drained') {
      // Already exiting: the stop signal that began it (or, after an upgrade, the
      // first one) changes nothing; the next one ends the drain now and steps
      // aside, so that one more gets the default action.
      this.#stopSignals++;
      if (this.#stopSignals >= (this.#exitInfo?.mode === 'upgrade' ? 2 : 1)) {
        this.#forced = true;
        this.#drain?.force();
        this.#removeSignals();
      }
      return;
    }
    this.#shutdown(action, signal);
  }

  async #upgrade(reason: string): Promise<number> {
    const refusal = this.#upgradeRefusal();
    if (refusal) {
      this.#emit({ type: 'refused', reason, error: refusal });
      throw refusal;
    }
    this.#setState('upgrading');
    this.#emit({ type: 'requested', reason });
    const started = performance.now();
    const generation = this.generation + 1;
    try {
      const command = await this.#resolveCommand();
      if (this.#state !== 'upgrading') throw this.#stoppingError();
      const { fds, sockets } = this.#registry.handoff();
      this.#pending = spawnGeneration({
        command,
        generation,
        fds,
        sockets,
        timeoutMs: this.#options.upgradeTimeout,
        onSpawn: (childPid) => this.#emit({ type: 'child-spawned', childPid }),
      });
      const child = await this.#pending.ready;
      this.#pending = undefined;
      const elapsedMs = performance.now() - started;
      this.#emit({ type: 'child-ready', childPid: child.pid, elapsedMs });
      debug('generation %d (pid %d) ready after %d ms', generation, child.pid, Math.round(elapsedMs));
      this.#beginExit({ mode: 'upgrade', reason, successor: child.pid }, this.#listeners);
      for (const listener of this.#listeners) listener.stop();
      this.#announceExit();
      return child.pid;
    } catch (err) {
      this.#pending = undefined;
      const error = err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', (err as Error).message, { cause: err });
      this.#emit({ type: 'child-failed', error, elapsedMs: performance.now() - started });
      if (this.#state === 'upgrading') {
        this.#setState('ready');
        // A child that stopped itself before it was ready must not have touched the
        // shared sockets, but make sure no SYN filter survives it.
        this.#registry.acceptNewConnections();
        // The child may have written its pid before failing: the PID file is ours again.
        if (this.#options.pidFile) await writePidFile(this.#options.pidFile).catch((e: Error) => debug('pid file: %s', e.message));
      }
      throw error;
    }
  }

  #upgradeRefusal(): EcdysisError | undefined {
    switch (this.#state) {
      case 'starting':
        return new EcdysisError('ERR_ECDYSIS_NOT_READY', `generation ${this.generation} cannot upgrade before ready()`);
      case 'upgrading':
        return new EcdysisError('ERR_ECDYSIS_UPGRADE_IN_PROGRESS', `generation ${this.generation} is already upgrading`);
      case 'exiting':
      case 'drained':
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

  #shutdown(mode: 'stop' | 'partial-stop', reason: string): void {
    if (this.#state === 'exiting' || this.#state === 'drained') return;
    if (this.#handover) {
      // Ready was sent and the parent may be committing right now: whether this
      // generation owns the service is known only once it answers.
      this.#deferredStop ??= { mode, reason };
      return;
    }
    if (this.#state === 'upgrading') {
      this.#pending?.abort(this.#stoppingError());
    }
    // Before ready, while the parent still serves, the sockets are the parent's
    // too: stopping this generation must leave them, and their paths, exactly as
    // they are, for every listener (stopOnShutdown: false ones included).
    const parentServes = this.#state === 'starting' && this.parentAlive;
    const stopping = parentServes ? [...this.#listeners] : this.#listeners.filter((l) => l.stopOnShutdown);
    this.#beginExit({ mode, reason }, stopping);
    if (mode === 'partial-stop' || parentServes) {
      for (const listener of stopping) listener.stop();
      if (parentServes) {
        for (const listener of stopping) this.#registry.remove(listener.key);
        this.#registry.closeUnclaimed();
      }
      this.#announceExit();
      return;
    }
    for (const listener of stopping) listener.prepareStop();
    this.#closing = this.#closeForGood(stopping).finally(() => this.#announceExit());
    if (this.#options.pidFile) void removePidFileIfOwned(this.#options.pidFile);
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

  /** The state machine enters 'exiting'; nothing is announced yet. */
  #beginExit(info: ExitInfo, stopping: StreamListener[]): void {
    this.#exitInfo = info;
    this.#stopping = stopping;
    this.#setState('exiting');
  }

  /** Once the stopping listeners no longer accept: abort `signal`, emit `exiting`, resolve `exit`. */
  #announceExit(): void {
    const info = this.#exitInfo!;
    this.#abort.abort(new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is exiting (${info.mode}: ${info.reason})`));
    this.#emit({ type: 'exiting', mode: info.mode, reason: info.reason });
    this.#resolveExit(info);
  }

  #addListener<T extends StreamListener>(listener: T, entry: RegistryEntry): T {
    this.#listeners.push(listener);
    this.#entries.set(listener, entry);
    if (this.#state === 'ready' || this.#state === 'upgrading') listener.start();
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
    if (this.#state === 'exiting' || this.#state === 'drained') throw this.#stoppingError();
    if (this.#state === 'upgrading') {
      throw new EcdysisError(
        'ERR_ECDYSIS_UPGRADE_IN_PROGRESS',
        'cannot add a listener while an upgrade is in flight: the next generation would not get it',
      );
    }
  }

  #stoppingError(): EcdysisError {
    return new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is shutting down`);
  }

  #setState(state: EcdysisState): void {
    debug('state %s -> %s', this.#state, state);
    this.#state = state;
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
