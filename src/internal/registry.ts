/**
 * What is handed to the next generation: listener key -> a close-on-exec fd the
 * registry owns for the life of the process. Node objects never own these fds;
 * they adopt their own duplicates, so closing a Node server never closes the
 * socket the next generation is serving.
 */
import { isIPv6 } from 'node:net';
import { EcdysisError } from '../errors.ts';
import { closeQuietly, native } from './native.ts';
import { FIRST_SOCKET_FD, type SocketEntry, type SocketKind } from './protocol.ts';

/** A socket this generation owns; `fd` is the registry's own (close-on-exec) fd. */
export interface RegistryEntry extends SocketEntry {
  /** True when the socket came from the previous generation. */
  inherited: boolean;
}

/** How a listener asks for a socket: by key first, then by what it is bound to. */
export interface ClaimRequest {
  key: string;
  kind: SocketKind;
  host?: string;
  port?: number;
  path?: string;
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
  adoptInherited(sockets: SocketEntry[]): void {
    const adopted: RegistryEntry[] = [];
    try {
      for (const socket of sockets) {
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
        const wantDomain = socket.kind === 'unix' ? ['unix'] : ['inet', 'inet6'];
        if (!description.socket || description.type !== 'stream' || !wantDomain.includes(description.domain ?? '') || !description.listening) {
          throw new EcdysisError(
            'ERR_ECDYSIS_BAD_ENVIRONMENT',
            `inherited fd ${socket.fd} for "${socket.key}" is not a listening ${socket.kind} stream socket ` +
              `(found ${description.socket ? `${description.domain} ${description.type}` : 'a non-socket'}` +
              `${description.listening ? '' : ', not listening'})`,
          );
        }
        const bound = socket.kind === 'unix' ? description.path ?? '' : `${description.address}:${description.port}`;
        const listed = socket.kind === 'unix' ? socket.path ?? '' : `${socket.host}:${socket.port}`;
        const matches =
          socket.kind === 'unix'
            ? bound === listed
            : description.port === socket.port && sameHost(description.address ?? '', socket.host ?? '');
        if (!matches) {
          throw new EcdysisError(
            'ERR_ECDYSIS_BAD_ENVIRONMENT',
            `inherited fd ${socket.fd} for "${socket.key}" is bound to ${JSON.stringify(bound)}, not ${JSON.stringify(listed)} as the hello says`,
          );
        }
        native().setCloexec(socket.fd, true);
        adopted.push({ ...socket, inherited: true });
      }
    } catch (err) {
      for (const entry of adopted) closeQuietly(entry.fd);
      throw err;
    }
    for (const entry of adopted) this.#unclaimed.set(entry.key, entry);
  }

  /**
   * Find an inherited socket for a request: same key and compatible address, or
   * else the same bound address. A named listener whose address changed between
   * releases gets a new socket (the old one is closed at ready()).
   */
  claim(request: ClaimRequest): RegistryEntry | undefined {
    let found = this.#unclaimed.get(request.key);
    if (found && (found.kind !== request.kind || !sameAddress(found, request))) found = undefined;
    if (!found) {
      // By address only for an explicit port: port 0 requests match by key alone.
      for (const entry of this.#unclaimed.values()) {
        if (entry.kind === request.kind && (request.kind === 'unix' || request.port !== 0) && sameAddress(entry, request)) {
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
   * Remove any SYN filter from the TCP sockets (see refuseNewConnections): a
   * failed child must never leave the sockets this generation serves refusing.
   */
  acceptNewConnections(): void {
    for (const entry of [...this.#entries.values(), ...this.#unclaimed.values()]) {
      if (entry.kind !== 'tcp') continue;
      try {
        native().acceptNewConnections(entry.fd);
      } catch {
        // No filter attached, or the fd is gone: nothing to undo.
      }
    }
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
    closeQuietly(entry.fd);
  }

  /** Close every inherited socket this generation did not ask for (at ready()). */
  closeUnclaimed(): string[] {
    const keys = [...this.#unclaimed.keys()];
    for (const entry of this.#unclaimed.values()) closeQuietly(entry.fd);
    this.#unclaimed.clear();
    return keys;
  }

  /** The stdio slots (from fd 4 on) and the hello table for the next generation. */
  handoff(): { fds: number[]; sockets: SocketEntry[] } {
    const fds: number[] = [];
    const sockets: SocketEntry[] = [];
    for (const entry of this.#entries.values()) {
      const { inherited: _inherited, fd, ...rest } = entry;
      sockets.push({ ...rest, fd: FIRST_SOCKET_FD + fds.length });
      fds.push(fd);
    }
    return { fds, sockets };
  }
}

function sameAddress(entry: RegistryEntry, request: ClaimRequest): boolean {
  if (request.kind === 'unix') return entry.path === request.path;
  return sameHost(entry.host ?? '', request.host ?? '') && (request.port === 0 || entry.port === request.port);
}

/**
 * The kernel reports a bound address in its own spelling (inet_ntop, no zone),
 * the application asks in its own: compare what they mean. The two wildcards are
 * one (a '::' request falls back to '0.0.0.0' where IPv6 is off).
 */
function sameHost(bound: string, requested: string): boolean {
  const a = canonicalHost(bound);
  const b = canonicalHost(requested);
  return a === b || (WILDCARDS.has(a) && WILDCARDS.has(b));
}

const WILDCARDS = new Set(['::', '0.0.0.0']);

function canonicalHost(host: string): string {
  const unzoned = host.replace(/%.*$/, '');
  if (isIPv6(unzoned)) return new URL(`http://[${unzoned}]/`).hostname.slice(1, -1);
  return unzoned;
}
