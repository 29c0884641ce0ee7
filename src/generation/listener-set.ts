/**
 * The listeners of one generation and the registry sockets behind them: how a
 * request becomes a listener (its key reserved, an inherited socket claimed or a
 * new one created), and how listeners stop for good.
 */
import { EcdysisError } from '../errors.ts';
import { kindOf } from '../kinds/index.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import type { Listener } from '../listeners/listener.ts';
import { native } from '../internal/native.ts';
import { workerSocketKey, type Registry, type RegistryEntry } from './registry.ts';

/** What a generation's role changes in how its listeners are made. */
export interface ListenRole {
  /** A worker: it serves only the sockets its primary gave it; asking for another is this error. */
  inheritedOnly?: (key: string) => EcdysisError;
  /** A primary: TCP and UDP sockets are groups of this many (one per worker). */
  members?: number;
}

/** Handshakes already under way when SYNs start being dropped finish within a round trip. */
const HANDSHAKE_GRACE_MS = 100;
const QUEUE_DRAIN_LIMIT_MS = 2_000;

export class ListenerSet {
  readonly #registry: Registry;
  readonly #listeners: Listener[] = [];
  /** The registry entry behind each listener. */
  readonly #entries = new Map<Listener, RegistryEntry>();
  readonly #portZeroCount = new Map<string, number>();
  /** Keys of listeners being created across an await. */
  readonly #reservedKeys = new Set<string>();
  /** A worker's leave under way (leaveWhenEmpty): since when nothing new may come. */
  #leaving: QueueWait | undefined;

  constructor(registry: Registry) {
    this.#registry = registry;
  }

  /** In creation order. */
  get all(): readonly Listener[] {
    return this.#listeners;
  }

  /**
   * Carry out a request: reserve its key (a concurrent request for it
   * conflicts), claim the inherited socket or create one, make the listener.
   * `canListen` throws when the generation no longer may (checked again after
   * every await).
   */
  async add<L extends Listener>(request: ListenRequest<L>, canListen: () => void, role: ListenRole = {}): Promise<L> {
    const key = this.#key(request);
    this.#reservedKeys.add(key);
    try {
      let entry = this.#registry.claim({ key, kind: request.spec.kind, address: request.address, numbered: request.numbered });
      if (!entry && request.systemd !== undefined) {
        const passed = this.#registry.unclaimed(key);
        if (passed) {
          const where = passed.path ?? `${passed.host}:${passed.port}`;
          throw new EcdysisError(
            'ERR_ECDYSIS_SYSTEMD',
            `the socket systemd passed as "${request.systemd}" (fd ${passed.fd}) is a ${passed.kind} socket on ${where}, ` +
              `not the ${request.spec.kind} socket ${JSON.stringify(request.address)} asked for`,
          );
        }
      }
      if (!entry && role.inheritedOnly) throw role.inheritedOnly(key);
      if (entry) {
        request.adopt?.(entry);
      } else {
        const created = await request.create();
        try {
          canListen();
        } catch (err) {
          await request.discard(created);
          throw err;
        }
        entry = { ...created, key, kind: request.spec.kind, inherited: false };
        this.#registry.add(entry);
      }
      if (role.members !== undefined && request.member) {
        try {
          await this.#members(entry, request, role.members);
          canListen();
        } catch (err) {
          this.#registry.removeMembers(key);
          if (!entry.inherited) {
            this.#registry.forget(key);
            await request.discard(entry);
          }
          throw err;
        }
      }
      const listener = request.listener(entry);
      this.#listeners.push(listener);
      this.#entries.set(listener, entry);
      return listener;
    } finally {
      this.#reservedKeys.delete(key);
    }
  }

  /**
   * A worker group's sockets beside `base` (worker 0's): one per worker index
   * under `<key>#w<i>`, bound where `base` is, in SO_REUSEPORT's group, in
   * index order (the steering program counts on it). Inherited ones are kept,
   * including those past `count` (the group shrank): no socket of the group is
   * closed while the service runs, as that drops what waits in its queue.
   */
  async #members(base: RegistryEntry, request: ListenRequest<unknown>, count: number): Promise<void> {
    // An older generation, or systemd, may have made it without.
    try {
      native().setReusePort(base.fd);
    } catch (err) {
      throw new EcdysisError('ERR_ECDYSIS_WORKER', `SO_REUSEPORT cannot be set on the socket of "${base.key}": ${(err as Error).message}`, { cause: err });
    }
    for (let index = 1; ; index++) {
      const key = workerSocketKey(base.key, index);
      const inherited = this.#registry.claim({ key, kind: base.kind, address: base, numbered: true });
      if (inherited) continue;
      if (index >= count) return;
      let created;
      try {
        created = await request.member!(base);
      } catch (err) {
        throw new EcdysisError('ERR_ECDYSIS_WORKER', `worker ${index}'s socket for "${base.key}" could not be created: ${(err as Error).message}`, { cause: err });
      }
      this.#registry.add({ ...created, key, kind: base.kind, inherited: false });
    }
  }

  /** Each listener's key, kind, bound address and open connections (for `status`). */
  describe(): { key: string; kind: string; address: string; connections: number }[] {
    return this.#listeners.map((listener) => {
      const entry = this.#entries.get(listener)!;
      const address = entry.path !== undefined ? entry.path.replace(/^\0/, '@') : `${entry.host?.includes(':') ? `[${entry.host}]` : entry.host}:${entry.port}`;
      return { key: listener.key, kind: listener.kind, address, connections: listener.connectionCount };
    });
  }

  /**
   * A full stop closes the sockets. Closing a listener resets every connection
   * still in its accept queue, including ones that already sent a request, so
   * first make the kernel let nobody new in (each kind knows how), keep
   * accepting until the queues are empty, then close.
   */
  async closeForGood(listeners: Listener[]): Promise<void> {
    // A socket systemd passed stays listening in systemd after this service is
    // gone (the next start gets it): what queues there is for that start.
    const records = listeners
      .map((listener) => {
        const entry = this.#entries.get(listener)!;
        return { listener, entry, spec: kindOf(entry.kind)! };
      })
      .filter(({ entry }) => !entry.activated);
    for (const { entry, spec } of records) {
      await spec.refuseNew(entry);
      // A primary's: every worker's socket of the group refuses at once too (each worker takes what waits in its own).
      for (const member of this.#registry.members(entry.key)) await spec.refuseNew(member);
    }
    // Only a listener somebody accepts on can empty its queue.
    const serving = records.filter(({ listener }) => listener.accepting);
    if (serving.length > 0) await waitForEmptyQueues(() => serving.some(({ entry, spec }) => spec.hasQueued(entry)));
    for (const listener of listeners) {
      listener.stop();
      this.#registry.remove(listener.key);
      this.#registry.removeMembers(listener.key);
    }
  }

  /**
   * A worker leaving its own sockets of a group to its primary: keep accepting
   * until nothing waits in them (new peers go elsewhere once the primary
   * steers them away), then stop and close this process's fds. Shared sockets
   * (Unix) are served by the other workers meanwhile: nothing to wait for.
   */
  async leaveWhenEmpty(listeners: Listener[]): Promise<void> {
    const wait = { since: performance.now() };
    this.#leaving = wait;
    await this.untilEmpty(this.ownGroupSockets(listeners), wait);
    this.#leaving = undefined;
    for (const listener of listeners) {
      listener.stop();
      this.#registry.remove(listener.key);
    }
  }

  /**
   * The primary stops the service while this worker leaves its sockets to it
   * (a stop signal of the worker's own came first): nobody will accept on them
   * after this worker, so they refuse new peers from now on, and the leave
   * waits until what came before is taken, as a full stop does. Its primary
   * had no reason to steer new peers away from them.
   */
  refuseWhileLeaving(listeners: Listener[]): void {
    const wait = this.#leaving;
    if (!wait) return;
    for (const listener of this.ownGroupSockets(listeners)) {
      const entry = this.#entries.get(listener)!;
      void kindOf(entry.kind)!.refuseNew(entry);
    }
    wait.since = performance.now();
  }

  /** A worker's own sockets of a group among `listeners` (TCP and UDP, one per index) that it accepts on. */
  ownGroupSockets(listeners: Listener[]): Listener[] {
    return listeners.filter((listener) => listener.accepting && (listener.kind === 'tcp' || listener.kind === 'udp'));
  }

  /** Resolves once nothing waits in these listeners' sockets (polled, bounded: QUEUE_DRAIN_LIMIT_MS); they keep accepting meanwhile. */
  async untilEmpty(listeners: Listener[], wait?: QueueWait): Promise<void> {
    const queues = listeners.map((listener) => ({ entry: this.#entries.get(listener)!, spec: kindOf(listener.kind)! }));
    if (queues.length > 0) await waitForEmptyQueues(() => queues.some(({ entry, spec }) => spec.hasQueued(entry)), wait);
  }

  /** Stop these listeners and close this process's own fds, leaving the sockets and paths to the parent. */
  leave(listeners: Listener[]): void {
    for (const listener of listeners) {
      listener.stop();
      this.#registry.remove(listener.key);
      this.#registry.removeMembers(listener.key);
    }
    this.#registry.closeUnclaimed();
  }

  #key(request: ListenRequest<unknown>): string {
    if (request.systemd !== undefined) return this.#systemdKey(request);
    let key = request.name === undefined ? request.key : `name:${request.name}`;
    if (request.name === undefined && request.numbered) {
      // Port 0: the nth such request matches the nth one of the previous generation.
      const n = (this.#portZeroCount.get(key) ?? 0) + 1;
      this.#portZeroCount.set(key, n);
      if (n > 1) key = `${key}#${n}`;
    }
    if (this.#inUse(key)) throw new EcdysisError('ERR_ECDYSIS_LISTENER_CONFLICT', `a listener "${key}" already exists in this generation`);
    return key;
  }

  /**
   * Several sockets may share a systemd name (a socket unit names all of its
   * sockets): keys systemd:web, systemd:web:2, ... A request with an address
   * takes the one bound there; by name alone, the first one not taken yet.
   */
  #systemdKey(request: ListenRequest<unknown>): string {
    const free: string[] = [];
    for (let n = 1; ; n++) {
      const key = n === 1 ? request.key : `${request.key}:${n}`;
      const passed = this.#registry.unclaimed(key) !== undefined;
      if (!passed && !this.#inUse(key)) break;
      if (passed && !this.#inUse(key)) free.push(key);
    }
    const wanted = { kind: request.spec.kind, address: request.address };
    const key = free.find((candidate) => this.#registry.unclaimedMatches(candidate, wanted)) ?? free[0] ?? request.key;
    if (this.#inUse(key)) {
      throw new EcdysisError('ERR_ECDYSIS_LISTENER_CONFLICT', `every socket systemd passed as "${request.systemd}" has its listener in this generation already`);
    }
    return key;
  }

  #inUse(key: string): boolean {
    return this.#registry.has(key) || this.#reservedKeys.has(key) || this.#listeners.some((l) => l.key === key);
  }
}

/** A wait for empty queues: the grace and the limit count from `since`, which may move later (refuseWhileLeaving). */
interface QueueWait {
  since: number;
}

/** Until nothing is queued (seen twice in a row, after the grace), at most the limit. */
async function waitForEmptyQueues(anyQueued: () => boolean, wait: QueueWait = { since: performance.now() }): Promise<void> {
  let emptyPolls = 0;
  while (performance.now() - wait.since < QUEUE_DRAIN_LIMIT_MS) {
    await new Promise((r) => setTimeout(r, 10));
    emptyPolls = anyQueued() ? 0 : emptyPolls + 1;
    if (emptyPolls >= 2 && performance.now() - wait.since >= HANDSHAKE_GRACE_MS) return;
  }
}
