/**
 * What is handed to the next generation: listener key -> a close-on-exec fd the
 * registry owns for the life of the process. Node objects never own these fds;
 * they adopt their own duplicates, so closing a Node server never closes the
 * socket the next generation is serving.
 */
import { EcdysisError } from '../errors.ts';
import { kindOf } from '../kinds/index.ts';
import { KIND_FACTS, inheritedMismatch, sameInetAddress, type BoundAddress, type SocketKind, type SocketRecord } from '../wire/sockets.ts';
import { closeQuietly, native } from '../internal/native.ts';
import { HANDOFF_FD } from '../wire/protocol.ts';
import type { ActivatedSocket } from '../systemd/activation.ts';

/** A socket this generation owns; `fd` is the registry's own (close-on-exec) fd. */
export interface RegistryEntry extends SocketRecord {
  /** True when the socket came from the previous generation. */
  inherited: boolean;
}

/** How a listener asks for a socket: by key first, then (unless numbered) by what it is bound to. */
export interface ClaimRequest {
  key: string;
  kind: SocketKind;
  address: BoundAddress;
  /** Port 0: matched by key only (the nth request gets the nth socket). */
  numbered: boolean;
}

export class Registry {
  /** Sockets in use by this generation, by key. */
  #entries = new Map<string, RegistryEntry>();
  /** Sockets inherited from the parent that no listener has claimed yet. */
  #unclaimed = new Map<string, RegistryEntry>();

  /**
   * Take over the sockets the parent listed. Each fd is checked against what the
   * hello frame says it is (kind, listening, bound address), then marked
   * close-on-exec. On a mismatch ERR_ECDYSIS_BAD_ENVIRONMENT is thrown and the
   * fds that passed the check are closed; the others are left alone, because a
   * number the parent never passed may be one this process owns (libuv's epoll
   * fd, a signal pipe).
   */
  adoptInherited(sockets: SocketRecord[]): void {
    const adopted: RegistryEntry[] = [];
    try {
      for (const socket of sockets) {
        const spec = kindOf(socket.kind);
        if (!spec) throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `inherited fd ${socket.fd} for "${socket.key}" is of unknown kind ${socket.kind}`);
        let description;
        try {
          description = native().describe(socket.fd);
        } catch (err) {
          throw new EcdysisError(
            'ERR_ECDYSIS_BAD_ENVIRONMENT',
            `inherited fd ${socket.fd} for "${socket.key}" is unusable: ${(err as Error).message}`,
            { cause: err },
          );
        }
        const mismatch = inheritedMismatch(description, socket);
        if (mismatch) throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `inherited fd ${socket.fd} for "${socket.key}" ${mismatch}`);
        native().setCloexec(socket.fd, true);
        // A stop elsewhere (a generation that stopped, a previous start) may have
        // left a SYN filter on it: this generation serves it, so it goes.
        spec.readmit(socket);
        adopted.push({ ...socket, inherited: true });
      }
    } catch (err) {
      for (const entry of adopted) closeQuietly(entry.fd);
      throw err;
    }
    for (const entry of adopted) this.#unclaimed.set(entry.key, entry);
  }

  /**
   * Take the sockets systemd passed (socket activation, or its fd store): like
   * inherited ones, they wait for a listener to claim them, by key (a systemd
   * name) or by address.
   */
  adoptActivated(sockets: ActivatedSocket[]): void {
    for (const socket of sockets) {
      if (this.#unclaimed.has(socket.key)) {
        // The same socket twice (from its socket unit and from the fd store): one fd is enough.
        closeQuietly(socket.fd);
        continue;
      }
      const entry: RegistryEntry = { key: socket.key, kind: socket.kind, fd: socket.fd, ...socket.address, inherited: true };
      if (!socket.stored) entry.activated = true;
      // A stop of a previous start may have left a SYN filter on a stored socket.
      kindOf(socket.kind)?.readmit(entry);
      this.#unclaimed.set(socket.key, entry);
    }
  }

  /** How many sockets `key`'s reuseport group has here: its own and its members (`<key>#w<n>`), claimed or not. */
  groupSize(key: string): number {
    let size = 1;
    for (const member of [...this.#entries.keys(), ...this.#unclaimed.keys()]) if (isMemberOf(member, key)) size++;
    return size;
  }

  /** An inherited or activated socket not claimed yet, by key (to say why a request does not match it). */
  unclaimed(key: string): RegistryEntry | undefined {
    return this.#unclaimed.get(key);
  }

  /** Whether the unclaimed socket under `key` is of this kind and bound where asked (any address when none is given). */
  unclaimedMatches(key: string, request: Pick<ClaimRequest, 'kind' | 'address'>): boolean {
    const entry = this.#unclaimed.get(key);
    return entry !== undefined && matches(entry, request);
  }

  /** Every socket in use by this generation. */
  get entries(): readonly RegistryEntry[] {
    return [...this.#entries.values()];
  }

  /**
   * Find an inherited socket for a request: same key and compatible address, or
   * else the same bound address. A named listener whose address changed between
   * releases gets a new socket (the old one is closed once unclaimed).
   */
  claim(request: ClaimRequest): RegistryEntry | undefined {
    let found = this.#unclaimed.get(request.key);
    if (found && !matches(found, request)) found = undefined;
    if (!found && !request.numbered) {
      for (const entry of this.#unclaimed.values()) {
        if (matches(entry, request)) {
          found = entry;
          break;
        }
      }
    }
    if (!found) return undefined;
    this.#unclaimed.delete(found.key);
    const entry = { ...found, key: request.key };
    this.#entries.set(request.key, entry);
    return entry;
  }

  /**
   * Undo what a full stop did to the sockets where it can be undone (a SYN
   * filter): a failed child, or a dead successor, must never leave the sockets
   * this generation serves refusing.
   */
  readmitAll(): void {
    for (const entry of [...this.#entries.values(), ...this.#unclaimed.values()]) kindOf(entry.kind)?.readmit(entry);
  }

  has(key: string): boolean {
    return this.#entries.has(key);
  }

  add(entry: RegistryEntry): void {
    this.#entries.set(entry.key, entry);
  }

  /** Stop handing a socket over and close the registry's fd (a full stop). */
  remove(key: string): void {
    const entry = this.#entries.get(key);
    if (!entry) return;
    this.#entries.delete(key);
    if (entry.local) entry.local.close();
    else closeQuietly(entry.fd);
  }

  /** A worker group's sockets beside `key`'s (worker 1 on). */
  members(key: string): RegistryEntry[] {
    return [...this.#entries.values()].filter((entry) => isMemberOf(entry.key, key));
  }

  /** Close a worker group's sockets beside `key`'s (worker 1 on). */
  removeMembers(key: string): void {
    for (const member of this.members(key)) this.remove(member.key);
  }

  /** Drop an entry without closing its fd (its creator closes it). */
  forget(key: string): void {
    this.#entries.delete(key);
  }

  /** Close every inherited socket no listener asked for. */
  closeUnclaimed(): string[] {
    const keys = [...this.#unclaimed.keys()];
    for (const entry of this.#unclaimed.values()) closeQuietly(entry.fd);
    this.#unclaimed.clear();
    return keys;
  }

  /**
   * What worker `index` of a group serves: each socket the application asked
   * for, under its key: the worker's own member of a reuseport group (key
   * `<key>#w<index>`, `workerSocketKey`) where there is one, else the shared
   * socket. Control sockets and the probe listener are the primary's.
   */
  forWorker(index: number): { fds: number[]; sockets: SocketRecord[] } {
    const fds: number[] = [];
    const sockets: SocketRecord[] = [];
    for (const entry of this.#entries.values()) {
      if (isGroupMember(entry.key) || /^(control|probes):/.test(entry.key)) continue;
      const own = index === 0 ? entry : (this.#entries.get(workerSocketKey(entry.key, index)) ?? entry);
      const { inherited: _inherited, fd, ...rest } = own;
      sockets.push({ ...rest, key: entry.key, fd: HANDOFF_FD + 1 + fds.length });
      fds.push(fd);
    }
    return { fds, sockets };
  }

  /** The stdio slots (after the hand-over channel) and the hello table for the next generation. */
  forSuccessor(): { fds: number[]; sockets: SocketRecord[] } {
    const fds: number[] = [];
    const sockets: SocketRecord[] = [];
    for (const entry of this.#entries.values()) {
      const { inherited: _inherited, fd, ...rest } = entry;
      sockets.push({ ...rest, fd: HANDOFF_FD + 1 + fds.length });
      fds.push(fd);
    }
    return { fds, sockets };
  }
}

function matches(entry: RegistryEntry, request: Pick<ClaimRequest, 'kind' | 'address'>): boolean {
  if (entry.kind !== request.kind) return false;
  // A socket asked for by its systemd name alone: any address.
  if (!request.address.host && request.address.path === undefined) return true;
  if (KIND_FACTS[entry.kind].family === 'unix') return entry.path === request.address.path;
  return sameInetAddress(entry, request.address);
}

/** The key of worker `index`'s own socket of a reuseport group (index 0 has the listener's own key). */
export function workerSocketKey(key: string, index: number): string {
  return index === 0 ? key : `${key}#w${index}`;
}

/** A worker's own socket of a reuseport group (index 1 on), not a listener of its own. */
export function isGroupMember(key: string): boolean {
  return /#w\d+$/.test(key);
}

/** Whether `member` is one of `key`'s group's sockets of worker 1 on. */
function isMemberOf(member: string, key: string): boolean {
  return isGroupMember(member) && member.slice(0, member.lastIndexOf('#w')) === key;
}
