/**
 * The facts of each kind of socket the generations hand over, in one table:
 * its address family, its socket type, whether it listens. The wire protocol,
 * the registry, socket activation and the kinds' own specs all read them
 * here; adding a kind adds a row.
 */
import type { LocalHandle } from '../internal/local-mode.ts';
import type { FdDescription } from '../internal/native.ts';

export type SocketKind = 'tcp' | 'unix' | 'udp' | 'unix-datagram' | 'unix-seqpacket';
export type AddressFamily = 'inet' | 'unix';

export interface SocketFacts {
  readonly family: AddressFamily;
  /** What an fd of this kind must be. */
  readonly type: 'stream' | 'dgram' | 'seqpacket';
  readonly listening: boolean;
}

export const KIND_FACTS: { readonly [K in SocketKind]: SocketFacts } = {
  tcp: { family: 'inet', type: 'stream', listening: true },
  unix: { family: 'unix', type: 'stream', listening: true },
  udp: { family: 'inet', type: 'dgram', listening: false },
  'unix-datagram': { family: 'unix', type: 'dgram', listening: false },
  'unix-seqpacket': { family: 'unix', type: 'seqpacket', listening: true },
};

/** A kind this version knows (a newer parent may hand over others). */
export function isSocketKind(kind: string): kind is SocketKind {
  return Object.hasOwn(KIND_FACTS, kind);
}

/** Where a socket is bound, as the hello frame and the registry record it. */
export interface BoundAddress {
  /** inet: the bound address, in the kernel's spelling. */
  host?: string;
  port?: number;
  /** unix: the path (absolute), or an abstract name starting with '\0'. */
  path?: string;
  /** unix: the inode of the socket file this service created, so it unlinks only its own. */
  pathInode?: number;
}

/** A socket of this generation: the registry's own (close-on-exec) fd and where it is bound. */
export interface SocketRecord extends BoundAddress {
  key: string;
  kind: SocketKind;
  /** -1 in local mode, where the socket is `local`'s alone. */
  fd: number;
  /**
   * Local mode (internal/local-mode.ts): the Node object that created the
   * socket and is its only holder. Never handed over (there are no upgrades).
   */
  local?: LocalHandle;
  /**
   * systemd passed it (socket activation): systemd holds it too and keeps it
   * listening after this service stops, so a stop never refuses new peers on it.
   */
  activated?: boolean;
}

/** The kind an fd is, among those this version hands over (socket activation, the fd store). */
export function kindOfDescription(d: FdDescription): SocketKind | undefined {
  if (!d.socket) return undefined;
  const family = d.domain === 'unix' ? 'unix' : d.domain === 'inet' || d.domain === 'inet6' ? 'inet' : undefined;
  // A datagram socket never listens; a stream or seqpacket one must.
  return (Object.keys(KIND_FACTS) as SocketKind[]).find((kind) => {
    const facts = KIND_FACTS[kind];
    return facts.family === family && facts.type === d.type && (!facts.listening || Boolean(d.listening));
  });
}

/**
 * Why an inherited fd cannot be what the hello says it is, or undefined when
 * it can: the right domain and type, listening or not, bound where it says.
 */
export function inheritedMismatch(description: FdDescription, socket: SocketRecord): string | undefined {
  const facts = KIND_FACTS[socket.kind];
  const domains = facts.family === 'unix' ? ['unix'] : ['inet', 'inet6'];
  if (!description.socket || description.type !== facts.type || !domains.includes(description.domain ?? '') || Boolean(description.listening) !== facts.listening) {
    const found = description.socket
      ? `${description.domain} ${description.type}${description.listening ? ', listening' : ', not listening'}`
      : 'a non-socket';
    return `is not ${facts.listening ? 'a listening' : 'a bound'} ${socket.kind} socket (found ${found})`;
  }
  if (facts.family === 'unix') {
    if (description.path !== socket.path) return `is bound to ${JSON.stringify(description.path ?? '')}, not ${JSON.stringify(socket.path)} as the hello says`;
    return undefined;
  }
  if (description.port !== socket.port || !sameHost(description.address ?? '', socket.host ?? '')) {
    return `is bound to "${description.address}:${description.port}", not "${socket.host}:${socket.port}" as the hello says`;
  }
  return undefined;
}

/**
 * The kernel reports a bound address in its own spelling (inet_ntop, no zone),
 * the application asks in its own: compare what they mean. The two wildcards are
 * one (a '::' request falls back to '0.0.0.0' where IPv6 is off).
 */
export function sameHost(bound: string, requested: string): boolean {
  const a = canonicalHost(bound);
  const b = canonicalHost(requested);
  return a === b || (WILDCARDS.has(a) && WILDCARDS.has(b));
}

const WILDCARDS = new Set(['::', '0.0.0.0']);

function canonicalHost(host: string): string {
  const unzoned = host.replace(/%.*$/, '');
  // Only an IPv6 address has a colon. (Not net.isIPv6: its first call compiles a
  // regular expression that cost a new generation 6 to 11 ms of its start.)
  if (!unzoned.includes(':')) return unzoned;
  try {
    return new URL(`http://[${unzoned}]/`).hostname.slice(1, -1);
  } catch {
    return unzoned; // not an address: compared as spelled
  }
}

/** Same inet address: same host, and the same port unless 0 was asked for. */
export function sameInetAddress(bound: BoundAddress, requested: BoundAddress): boolean {
  return sameHost(bound.host ?? '', requested.host ?? '') && (requested.port === 0 || bound.port === requested.port);
}
