/**
 * A primary's workers: N processes running the same script, worker i serving
 * the primary's socket i of each TCP or UDP group (and the shared Unix
 * sockets). The mechanics only: spawn them all and hold their commit until the
 * whole group is ready (all or nothing), then supervise (a worker that dies or
 * stops on its own is replaced on its index, with a backoff; the steering
 * program keeps new connections off a missing index), pass the primary's orders
 * on, and say when the workers told to stop are drained. When to do what is
 * the lifecycle's (lifecycle/workers.ts).
 */
import { EcdysisError } from '../errors.ts';
import { closeQuietly } from '../internal/native.ts';
import type { HandoffChannel } from '../wire/handoff-channel.ts';
import { WORKER_HANDOFF_PROTOCOL_VERSION, type DrainCounts, type ResumeFrame, type StopFrame, type WorkerStatusFrame } from '../wire/protocol.ts';
import { handOverNothing } from './handoff-send.ts';
import type { SocketRecord } from '../wire/sockets.ts';
import { spawnSuccessor, type PendingSuccessor, type SpawnCommand, type Successor, type SuccessorEnd } from './successor.ts';
import { backoffMs, CrashWindow, HEALTHY_AFTER_MS } from './worker-restarts.ts';


export type WorkerState = 'starting' | 'ready' | 'serving' | 'draining' | 'drained' | 'exited';

/** What the group tells the lifecycle (events, steering, crashes). */
export type WorkerNews =
  | { type: 'worker-spawned'; index: number; workerPid: number }
  | { type: 'worker-started'; index: number; workerPid: number; elapsedMs: number }
  | { type: 'worker-ready'; index: number; workerPid: number; elapsedMs: number }
  | { type: 'worker-failed'; index: number; workerPid: number | null; error: EcdysisError }
  | { type: 'worker-exited'; index: number; workerPid: number; exitCode: number | null; signal: NodeJS.Signals | null; planned: boolean }
  | { type: 'worker-crash-loop'; index: number; failures: number; error: EcdysisError };

export interface WorkerGroupConfig {
  count: number;
  generation: number;
  command: SpawnCommand;
  timeoutMs: number;
  /** Worker `index`'s sockets (stdio slots and the hello table). */
  sockets(index: number): { fds: number[]; sockets: SocketRecord[] };
  /**
   * How many workers of the group's first start may start at once (the rest
   * each when one of those is up: it read its hello); default: all.
   */
  startAtOnce?: number;
  /** While starting, and the priority given back at its commit. */
  nice: (() => { starting: number; ready: number } | undefined) | undefined;
  news(news: WorkerNews): void;
  /** The indices whose worker serves changed (for the steering program). */
  serving(indices: number[]): void;
  /**
   * At a group's first start: the channel on which new worker `index` gets its
   * predecessor's hand-over (`fd`, the worker's end, owned by the spawn from
   * then on), and `offer`, called once with the worker's pid (undefined: it
   * never started), which sends the other end on its way to the old worker.
   */
  peer?: (index: number) => { fd: number; offer(pid: number | undefined): void } | undefined;
  /** Worker `index`, offered the channel to its successor, says its hand-over failed (an onHandoff handler threw...). */
  handoffFailed?: (index: number, message: string) => void;
}

export interface WorkerInfo {
  index: number;
  pid: number | null;
  state: WorkerState;
  connections: number;
  restarts: number;
}

/** `successorServes`: an upgrade's new generation accepts on the sockets of indices below it only. */
type Order = (Omit<StopFrame, 'protocol' | 'successor'> & { successorServes?: number }) | Omit<ResumeFrame, 'protocol'>;

interface Slot {
  index: number;
  pending: PendingSuccessor | undefined;
  worker: Successor | undefined;
  state: WorkerState;
  connections: number;
  restarts: number;
  /** Quick failures in a row (reset by a worker that served HEALTHY_AFTER_MS). */
  failures: number;
  servingSince: number;
  respawn: NodeJS.Timeout | undefined;
  /** Ordered to stop: its drain counts (or its exit) are awaited. */
  stopping: boolean;
  drain: DrainCounts | undefined;
  /** This end of the hand-over channel with the serving worker: worker-to-worker hand-overs are passed on there. */
  channel: HandoffChannel | undefined;
  /** It was given the channel to its successor in the upgrade under way. */
  offered: boolean;
}

export class WorkerGroup {
  readonly count: number;
  readonly #config: WorkerGroupConfig;
  readonly #slots: Slot[];
  /** Replacing workers that end: from the group's commit until a stop order. */
  #supervising = false;
  #gate: { promise: Promise<void>; open: () => void; shut: (e: EcdysisError) => void } | undefined;
  /** Keeps the primary's event loop alive while its group serves (its own listeners never accept). */
  #keepAlive: NodeJS.Timeout | undefined;
  readonly #crashes = new CrashWindow();
  #drainWaiters: (() => void)[] = [];
  #exitWaiters: (() => void)[] = [];
  /**
   * Workers that stepped aside on their own (a stop signal of theirs) and were
   * replaced, still draining: not serving any index, but the primary still
   * outlives them.
   */
  readonly #leaving = new Map<Successor, number>();

  constructor(config: WorkerGroupConfig) {
    this.#config = config;
    this.count = config.count;
    this.#slots = Array.from({ length: config.count }, (_, index) => ({
      index,
      pending: undefined,
      worker: undefined,
      state: 'starting' as WorkerState,
      connections: 0,
      restarts: 0,
      failures: 0,
      servingSince: 0,
      respawn: undefined,
      stopping: false,
      drain: undefined,
      channel: undefined,
      offered: false,
    }));
  }

  /**
   * Start every worker; resolves once all are ready (none serves before the
   * group's commit). The first failure kills the others and rejects.
   */
  async start(): Promise<void> {
    let open!: () => void;
    let shut!: (e: EcdysisError) => void;
    const promise = new Promise<void>((resolve, reject) => {
      open = resolve;
      shut = reject;
    });
    promise.catch(() => {});
    this.#gate = { promise, open, shut };
    this.#keepAlive ??= setInterval(() => {}, 1 << 30);
    // At most startAtOnce workers start at a time: each next one when one of them is up (it read its
    // hello: Node's bootstrap and the application's imports, the start's CPU burst, are behind it), or
    // ready, or failed (then #failure says how, and no more start). Every worker waits for the commit;
    // this resolves when each one started is ready or failed.
    const atOnce = Math.max(1, Math.min(this.#config.startAtOnce ?? this.count, this.count));
    await new Promise<void>((allSettled) => {
      let next = 0;
      let starting = 0;
      let unsettled = 0;
      const launch = () => {
        while (starting < atOnce && next < this.#slots.length && !this.#failure) {
          const slot = this.#slots[next++]!;
          starting++;
          unsettled++;
          let up = false;
          let settled = false;
          const isUp = () => {
            if (up) return;
            up = true;
            starting--;
            launch();
          };
          void this.#spawn(slot, {
            gate: promise,
            up: isUp,
            settled: () => {
              if (settled) return;
              settled = true;
              unsettled--;
              isUp();
              if (unsettled === 0 && (next === this.#slots.length || this.#failure)) allSettled();
            },
          });
        }
      };
      launch();
    });
    if (this.#failure) throw this.#failure;
  }

  /** The first worker that failed before the group's commit. */
  #failure: EcdysisError | undefined;

  /** The group serves: every worker gets its commit, and ends are replaced from now on. */
  commit(): void {
    this.#supervising = true;
    this.#gate?.open();
  }

  /** Before the commit: kill every worker (the upgrade failed, or the primary gives up). */
  abort(error: EcdysisError): void {
    this.#gate?.shut(error);
    for (const slot of this.#slots) {
      clearTimeout(slot.respawn);
      slot.pending?.abort(error);
    }
    this.#stopKeepingAlive();
  }

  /**
   * Tell every worker to stop accepting (and drain), or, forced, to end its
   * drain now; or to serve again (a take-back), replacing those gone meanwhile.
   */
  order(order: Order): void {
    if (order.type === 'resume') {
      this.#supervising = true;
      this.#keepAlive ??= setInterval(() => {}, 1 << 30);
      for (const slot of this.#slots) {
        slot.stopping = false;
        slot.drain = undefined;
        if (slot.worker) {
          slot.worker.order(order);
          this.#setState(slot, 'serving');
        } else if (!slot.pending) {
          this.#replace(slot, 0);
        }
      }
      this.#reportServing();
      return;
    }
    this.#supervising = false;
    for (const slot of this.#slots) {
      slot.offered = false;
      clearTimeout(slot.respawn);
      slot.respawn = undefined;
      // A replacement still starting is not needed any more.
      slot.pending?.abort(new EcdysisError('ERR_ECDYSIS_STOPPING', `worker ${slot.index} is not needed any more: the group is stopping`));
      if (!slot.worker) continue;
      slot.stopping = true;
      const { successorServes, ...frame } = order;
      // A worker of an index the new generation does not accept on takes what waits in its own sockets first.
      slot.worker.order(successorServes !== undefined && slot.index >= successorServes ? { ...frame, successor: false } : frame);
    }
    // Kept alive until they are drained: the primary's drain waits for theirs.
    this.#checkDrained();
  }

  /**
   * An upgrade: the new primary sent `fd`, the channel to its new worker
   * `index` (pid `pid`). It goes to this group's worker of that index, which
   * hands over on it; without one serving (the group is smaller, the worker is
   * being replaced or stopping, it speaks an older version), the new worker
   * gets an empty hand-over. Takes ownership of `fd`.
   */
  offerHandoff(index: number, fd: number, pid: number): void {
    const slot = this.#slots[index];
    const worker = slot?.worker;
    if (!slot || !worker || slot.state !== 'serving' || slot.stopping || !slot.channel || slot.channel.closed || worker.protocol < WORKER_HANDOFF_PROTOCOL_VERSION) {
      return handOverNothing(fd);
    }
    // The message holds its own copy of the fd from the call on.
    slot.channel.send({ t: 'worker-handoff', index, pid }, undefined, [fd]).catch(() => {});
    closeQuietly(fd);
    slot.offered = true;
  }

  /** The upgrade failed: every worker that was handing over keeps it all (its moved connections resume). */
  handoffFailed(): void {
    for (const slot of this.#slots) {
      if (!slot.offered) continue;
      slot.offered = false;
      if (slot.channel && !slot.channel.closed) slot.channel.send({ t: 'worker-handoff-failed' }).catch(() => {});
    }
  }

  /**
   * Well past a drain's deadline: workers told to stop that still run are
   * killed, those not drained (hung) and those drained but kept running by
   * their application alike, and those that had stepped aside on their own
   * (`drained` unknown). Returns what was killed.
   */
  kill(): { index: number; pid: number; drained: boolean | undefined }[] {
    const running = [
      ...this.#slots.filter((slot) => slot.stopping && slot.worker).map((slot) => ({ index: slot.index, pid: slot.worker!.pid, drained: slot.drain !== undefined })),
      // Stepped aside on their own: their drain is theirs, and its deadline long past.
      ...[...this.#leaving].map(([worker, index]) => ({ index, pid: worker.pid, drained: undefined })),
    ];
    const killed: { index: number; pid: number; drained: boolean | undefined }[] = [];
    for (const worker of running) {
      try {
        process.kill(worker.pid, 'SIGKILL');
        killed.push(worker);
      } catch {
        // gone already
      }
    }
    return killed;
  }

  /** Resolves once every worker told to stop is drained or gone, with their drains added up. */
  drained(): Promise<DrainCounts> {
    return new Promise<DrainCounts>((resolve) => {
      const done = () => resolve(this.#drainTotal());
      if (this.#allDrained()) return done();
      this.#drainWaiters.push(done);
    });
  }

  /**
   * Resolves once every worker told to stop has exited (and was reaped here):
   * the primary outlives its workers, so that none is ever orphaned.
   */
  exited(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.#allExited()) return resolve();
      this.#exitWaiters.push(resolve);
    });
  }

  describe(): WorkerInfo[] {
    return this.#slots.map((slot) => ({
      index: slot.index,
      pid: slot.worker?.pid ?? slot.pending?.pid ?? null,
      state: slot.state,
      connections: slot.connections,
      restarts: slot.restarts,
    }));
  }

  /** Indices whose worker serves now. */
  servingIndices(): number[] {
    return this.#slots.filter((s) => s.worker && s.state === 'serving').map((s) => s.index);
  }

  #spawn(slot: Slot, first?: { gate: Promise<void>; up: () => void; settled: () => void }): Promise<Successor | undefined> {
    const { fds, sockets } = this.#config.sockets(slot.index);
    const startedAt = performance.now();
    // Only a group's first start is niced (it starts beside the group that serves); a replacement restores capacity.
    const nice = first ? this.#config.nice?.() : undefined;
    slot.state = 'starting';
    slot.connections = 0;
    // Only a group's first start takes its predecessors' hand-over (an upgrade); a replacement starts empty.
    const peer = first ? this.#config.peer?.(slot.index) : undefined;
    const pending = spawnSuccessor({
      command: this.#config.command,
      generation: this.#config.generation,
      fds,
      sockets,
      timeoutMs: this.#config.timeoutMs,
      handoff: false,
      worker: { index: slot.index, count: this.count },
      ...(nice ? { nice } : {}),
      ...(peer ? { peer: peer.fd } : {}),
      onSpawn: (workerPid) => this.#config.news({ type: 'worker-spawned', index: slot.index, workerPid }),
      onReady: () => {
        slot.state = 'ready';
        this.#config.news({ type: 'worker-ready', index: slot.index, workerPid: pending.pid!, elapsedMs: performance.now() - startedAt });
        first?.settled();
      },
      ...(first ? { beforeCommit: () => first.gate } : {}),
      commit: (worker) => {
        // A replacement that got ready after the group was told to stop is not needed.
        if (!first && !this.#supervising) return new EcdysisError('ERR_ECDYSIS_STOPPING', `worker ${slot.index} is not needed any more: the group is stopping`);
        slot.worker = worker;
        slot.pending = undefined;
        // Read (messages from the worker are not for the primary, and fds riding on them are closed) and closed with the worker.
        const channel = pending.channel;
        slot.channel = channel;
        channel?.receive(
          (frame) => {
            frame.fds.forEach(closeQuietly);
            if (frame.header.t === 'worker-handoff-failed' && slot.offered && slot.channel === channel) {
              slot.offered = false;
              this.#config.handoffFailed?.(slot.index, String(frame.header.message).slice(0, 1024));
            }
          },
          () => {},
        );
        void worker.ended.then(() => {
          channel?.close();
          if (slot.channel === channel) slot.channel = undefined;
        });
        slot.servingSince = performance.now();
        this.#setState(slot, 'serving');
        worker.onStatus((status) => this.#onStatus(slot, worker, status));
        void worker.ended.then((end) => this.#onEnded(slot, worker, end));
        void worker.released.then(() => this.#onReleased(slot, worker));
        queueMicrotask(() => this.#reportServing());
        return undefined;
      },
    });
    slot.pending = pending;
    void pending.accepted.then((protocol) => {
      if (protocol > 0 && slot.pending === pending) this.#config.news({ type: 'worker-started', index: slot.index, workerPid: pending.pid!, elapsedMs: performance.now() - startedAt });
      first?.up();
    });
    // Once it has a pid (its start may run on a thread of the addon); undefined: it never started.
    if (peer) void pending.spawned.then((pid) => peer.offer(pid));
    return pending.ready.then(
      (worker) => worker,
      (error: EcdysisError) => {
        if (slot.pending === pending) slot.pending = undefined;
        slot.state = 'exited';
        if (error.code !== 'ERR_ECDYSIS_STOPPING' && error.code !== 'ERR_ECDYSIS_WORKER_FAILED') {
          this.#config.news({ type: 'worker-failed', index: slot.index, workerPid: pending.pid ?? null, error });
        }
        if (first) {
          if (!this.#failure) {
            this.#failure = new EcdysisError('ERR_ECDYSIS_WORKER_FAILED', `worker ${slot.index} of generation ${this.#config.generation} failed to start: ${error.message}`, {
              cause: error,
              ...(pending.pid === undefined ? {} : { pid: pending.pid }),
            });
            // All or nothing: the others are not needed.
            this.abort(this.#failure);
          }
          first.settled();
        } else if (this.#supervising) {
          this.#failed(slot);
        }
        this.#checkDrained();
        return undefined;
      },
    );
  }

  #onStatus(slot: Slot, worker: Successor, status: WorkerStatusFrame): void {
    if (slot.worker !== worker) return;
    slot.connections = status.connections;
    if (status.drain) {
      slot.drain = status.drain;
      this.#setState(slot, 'drained');
      this.#checkDrained();
    } else if (status.state === 'draining' || status.state === 'stopping' || status.state === 'probation') {
      this.#setState(slot, 'draining');
    }
  }

  /** The worker stopped on its own (its own stop signal): replace it now, it is not a crash. */
  #onReleased(slot: Slot, worker: Successor): void {
    if (slot.worker !== worker || !this.#supervising || slot.stopping) return;
    this.#leaving.set(worker, slot.index);
    this.#detach(slot);
    this.#replace(slot, 0);
  }

  #onEnded(slot: Slot, worker: Successor, end: SuccessorEnd): void {
    const planned = slot.stopping || end.released !== undefined;
    this.#config.news({ type: 'worker-exited', index: slot.index, workerPid: worker.pid, exitCode: end.exitCode, signal: end.signal, planned });
    if (this.#leaving.delete(worker)) return this.#checkDrained(); // already replaced (it had released its index)
    if (slot.worker !== worker) return;
    this.#detach(slot);
    slot.state = 'exited';
    this.#checkDrained();
    if (!this.#supervising) return;
    if (performance.now() - slot.servingSince >= HEALTHY_AFTER_MS) slot.failures = 0;
    if (planned) return this.#replace(slot, 0);
    this.#failed(slot);
  }

  /** An unplanned end or a failed replacement: replace it after the backoff; report a crash loop. */
  #failed(slot: Slot): void {
    slot.failures++;
    const error = this.#crashes.record(this.#config.generation);
    if (error) this.#config.news({ type: 'worker-crash-loop', index: slot.index, failures: this.#crashes.count, error });
    this.#replace(slot, backoffMs(slot.failures));
  }

  #replace(slot: Slot, delayMs: number): void {
    clearTimeout(slot.respawn);
    slot.respawn = setTimeout(() => {
      slot.respawn = undefined;
      if (!this.#supervising || slot.worker || slot.pending) return;
      slot.restarts++;
      void this.#spawn(slot);
    }, delayMs);
  }

  /** The slot's worker no longer serves its index. */
  #detach(slot: Slot): void {
    slot.worker = undefined;
    slot.connections = 0;
    this.#reportServing();
  }

  #setState(slot: Slot, state: WorkerState): void {
    slot.state = state;
  }

  #reportServing(): void {
    if (this.#supervising) this.#config.serving(this.servingIndices());
  }

  #allDrained(): boolean {
    return this.#slots.every((slot) => !slot.stopping || slot.drain !== undefined || !slot.worker);
  }

  #allExited(): boolean {
    return this.#leaving.size === 0 && this.#slots.every((slot) => !slot.worker && !slot.pending);
  }

  #drainTotal(): DrainCounts {
    const total = { completed: 0, closedIdle: 0, destroyed: 0 };
    for (const slot of this.#slots) {
      if (!slot.drain) continue;
      total.completed += slot.drain.completed;
      total.closedIdle += slot.drain.closedIdle;
      total.destroyed += slot.drain.destroyed;
    }
    return total;
  }

  #checkDrained(): void {
    if (this.#supervising || !this.#allDrained()) return;
    for (const done of this.#drainWaiters.splice(0)) done();
    // Kept alive until its workers have exited: the primary reaps them.
    if (!this.#allExited()) return;
    this.#stopKeepingAlive();
    for (const done of this.#exitWaiters.splice(0)) done();
  }

  #stopKeepingAlive(): void {
    clearInterval(this.#keepAlive);
    this.#keepAlive = undefined;
  }
}
