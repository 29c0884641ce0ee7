/**
 * Ecdysis, the public facade: one generation of a service that can be
 * upgraded without dropping a connection. It holds the generation's state
 * (lifecycle/core.ts) and delegates every method to the lifecycle's steps
 * (lifecycle/*.ts); it decides nothing itself.
 */
import type { Observable } from 'rxjs';
import { invalidOption } from './errors.ts';
import type { DrainOptions, DrainResult } from './listeners/drain.ts';
import { GenerationChannel } from './generation/generation-channel.ts';
import type { HandoffHandler } from './generation/handoff-send.ts';
import type { Inherited } from './generation/handoff-receive.ts';
import type { EcdysisOptions } from './lifecycle/options.ts';
import { tcpRequest, type TcpListener, type TcpListenOptions } from './kinds/tcp.ts';
import { udpRequest, type UdpListenOptions, type UdpSocket } from './kinds/udp.ts';
import { unixDatagramRequest, type DatagramSocket, type UnixDatagramListenOptions } from './kinds/unix-datagram.ts';
import { splitPathArguments } from './kinds/unix-request.ts';
import { unixSeqpacketRequest, type SeqpacketListener, type UnixSeqpacketListenOptions } from './kinds/unix-seqpacket.ts';
import { unixStreamRequest, type UnixListener, type UnixListenOptions } from './kinds/unix.ts';
import type { Generation } from './lifecycle/core.ts';
import { requestDrain } from './lifecycle/drain.ts';
import type { EcdysisEvent, WaitForParentOptions } from './lifecycle/events.ts';
import { stopByApplication } from './lifecycle/exit.ts';
import { waitForParentExit } from './generation/parent-link.ts';
import { addHealthCheck, health, type HealthCheck } from './lifecycle/health.ts';
import { listen } from './lifecycle/listen.ts';
import { metricFamilies } from './lifecycle/metrics.ts';
import type { MetricFamily } from './internal/prometheus.ts';
import type { Health } from './triggers/probes.ts';
import type { EcdysisState, ExitInfo } from './lifecycle/machine.ts';
import { ready } from './lifecycle/ready.ts';
import { startGeneration } from './lifecycle/start.ts';
import { rollback } from './lifecycle/rollback.ts';
import { upgradeWith, type UpgradeOptions } from './lifecycle/upgrade.ts';
import type { Listener } from './listeners/listener.ts';

export type { EcdysisEvent, WaitForParentOptions } from './lifecycle/events.ts';
export type { EcdysisState, ExitInfo, ExitMode } from './lifecycle/machine.ts';

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
  /**
   * With option `workers`: 'primary' in the process that holds the sockets and
   * runs the lifecycle (its listeners never accept), 'worker' in the processes
   * it starts, which run the same script and serve. 'single' without workers.
   */
  readonly role: 'single' | 'primary' | 'worker';
  /** In a worker: its index (0 to count - 1, the socket of each group it serves) and the group's size. */
  readonly worker: { readonly index: number; readonly count: number } | undefined;
  readonly #g: Generation;

  private constructor(g: Generation) {
    this.#g = g;
    // A worker is started by its primary, not by an upgrade: it is a child when its group is.
    this.isChild = g.role === 'worker' ? g.generation > 0 : g.link !== undefined;
    this.generation = g.generation;
    this.role = g.role;
    const worker = g.link?.hello.worker;
    this.worker = worker ? Object.freeze({ ...worker }) : undefined;
  }

  /**
   * Resolves when this generation starts exiting: after a successful upgrade,
   * or a stop. If it takes the service back (its successor died), a new
   * promise takes the place of this one, for its next exit.
   */
  get exit(): Promise<ExitInfo> {
    return this.#g.epoch.exit.promise;
  }

  /**
   * Aborted when this generation starts exiting; its reason is an EcdysisError.
   * A generation that takes the service back gets a new, unaborted signal.
   */
  get signal(): AbortSignal {
    return this.#g.epoch.abort.signal;
  }

  /**
   * Start this generation: validate the options, and when started by an upgrade,
   * read what the previous generation handed over.
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION, _UNSUPPORTED (cluster worker; off Linux it
   * runs in local mode instead), _BAD_ENVIRONMENT, _PROTOCOL, _PROTOCOL_VERSION.
   * @example
   * const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM'] });
   */
  static async create(options?: EcdysisOptions): Promise<Ecdysis> {
    return new Ecdysis(await startGeneration(options));
  }

  /** The current state of the lifecycle. */
  get state(): EcdysisState {
    return this.#g.phase.state;
  }

  /** True while the previous generation is still running (draining, in probation, or kept alive by its application). */
  get parentAlive(): boolean {
    // A worker's parent is its primary, not a previous generation.
    return this.#g.role !== 'worker' && this.#g.parentAlive;
  }

  /** Listeners of this generation, in creation order (control sockets are not listeners). */
  get listeners(): readonly Listener[] {
    return this.#g.applicationListeners();
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
    return listen(this.#g, () => tcpRequest(options));
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
    return listen(this.#g, () => unixStreamRequest(path, options));
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
    return listen(this.#g, () => udpRequest(options));
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
    return listen(this.#g, () => unixDatagramRequest(path, options));
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
    return listen(this.#g, () => unixSeqpacketRequest(path, options));
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
    return ready(this.#g);
  }

  /**
   * Start the next generation (`env`: variables changed for it, undefined
   * removes one) and hand it every socket. Resolves with its pid once it serves;
   * rejects, with this generation still serving, if it fails.
   * @throws {EcdysisError} refused: ERR_ECDYSIS_NOT_READY, _UPGRADE_IN_PROGRESS, _PARENT_ALIVE,
   * _STOPPING, _UPGRADE_UNSUPPORTED (local mode); failed: _CHILD_EXITED, _CHILD_TIMEOUT, _CHILD_ERROR,
   * _SPAWN_FAILED, _PROTOCOL.
   * @example
   * const pid = await ecdysis.upgrade({ env: { FEATURE_X: '1' } });
   */
  upgrade(options: UpgradeOptions = {}): Promise<number> {
    return upgradeWith(this.#g, options);
  }

  /**
   * Operator rollback: the previous generation, while it still runs (draining or in
   * its probation), takes the service back; this one then drains and exits (mode
   * 'rollback'). Resolves with the pid that serves again.
   * @throws {EcdysisError} ERR_ECDYSIS_ROLLBACK_UNAVAILABLE, ERR_ECDYSIS_UPGRADE_IN_PROGRESS.
   */
  rollback(): Promise<number> {
    return rollback(this.#g);
  }

  /**
   * Stop (after the `stopDelay` lame duck, if any): stop accepting (except on
   * listeners with `stopOnShutdown: false`), unlink this generation's Unix
   * paths, close the sockets, resolve `exit` with mode 'stop'. An upgrade in
   * flight is abandoned; accepted connections are left to drain(). After an
   * upgrade: the service is going away, never taken back, a probation ends.
   * In a worker it is a partial stop (it steps aside and its primary replaces
   * it): stopping the service is the primary's.
   */
  stop(): void {
    stopByApplication(this.#g, 'stop', 'stop()');
  }

  /**
   * Like stop(), but the listening sockets stay open and Unix paths stay in place
   * (connections keep queueing) for another process to take over, e.g. a
   * systemd socket unit or a supervisor. `exit` resolves with mode 'partial-stop'.
   */
  partialStop(): void {
    stopByApplication(this.#g, 'partial-stop', 'partialStop()');
  }

  /**
   * Wait until this generation is done: every connection its stopped listeners
   * handed out has ended (served HTTP closes gracefully; the rest is destroyed
   * at the deadline) and, after an upgrade, its probation is over. May be called
   * at any time; the drain starts when this generation exits. If the successor
   * dies first, this generation serves again and the promise resolves after its
   * next exit. Repeated calls share one result (the first call's options).
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION (as a rejection).
   */
  drain(options: DrainOptions = {}): Promise<DrainResult> {
    return requestDrain(this.#g, options);
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
    const g = this.#g;
    return g.events.observable(() => ({ type: 'state', state: g.phase.state, isChild: this.isChild, parentAlive: g.role !== 'worker' && g.parentAlive }));
  }

  /**
   * Resolves once the previous generation has exited (at once when there is
   * none). Upgrades are allowed earlier, once it is drained (`parent-drained`).
   *
   * @throws the signal's reason when `signal` aborts first.
   */
  waitForParent(options: WaitForParentOptions = {}): Promise<void> {
    return waitForParentExit(this.#g.link, options.signal);
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
    const handlers = this.#g.handoffHandlers;
    handlers.push(handler);
    return () => {
      const index = handlers.indexOf(handler);
      if (index !== -1) handlers.splice(index, 1);
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
    const { link, receiver } = this.#g;
    if (!link) return Promise.resolve(undefined);
    if (!receiver) return Promise.resolve({ state: undefined, files: new Map(), sockets: new Map() });
    return receiver.claim();
  }

  /**
   * What the probe listener's /livez (`live`: every check passes) and /readyz
   * (`ready`: live, and the service ready: serving and not stopping, or handed over in an
   * upgrade to a successor that serves) answer, for an application that serves its own.
   * @example
   * app.get('/readyz', async (_req, res) => res.status((await ecdysis.health()).ready ? 200 : 503).end());
   */
  health(): Promise<Health> {
    return health(this.#g);
  }

  /**
   * A check for health(), /livez and /readyz: true (or its promise, within 1 s) while healthy.
   * Returns a function that removes it. @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION.
   */
  addHealthCheck(name: string, check: HealthCheck): () => void {
    return addHealthCheck(this.#g, name, check);
  }

  /** The service's metrics (counters go on across generations); prometheusText() renders them as /metrics does. */
  metrics(): MetricFamily[] {
    return metricFamilies(this.#g);
  }

  /**
   * Messages with the other generation while both run: the previous one while
   * it is alive, else the latest successor (from its start until this process
   * exits). A closed channel when there is none.
   */
  channel(): GenerationChannel {
    const g = this.#g;
    if (g.parentAlive && g.parentChannel?.open) return g.parentChannel;
    if (g.successorChannel?.open) return g.successorChannel;
    return new GenerationChannel(undefined, undefined);
  }
}
