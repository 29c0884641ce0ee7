/**
 * What the state machine, the registry and the protocol need to know about a
 * kind of socket, in one place per kind: how its options are validated, its
 * hand-over key, how it is created, what an inherited fd of it must be, and how
 * it stops. Adding a kind touches this folder, the addon and the docs.
 */
import { isIPv6 } from 'node:net';
import { invalidOption } from '../errors.ts';
import { validateBoolean, validateInteger } from '../internal/options.ts';
import type { FdDescription } from '../internal/native.ts';


export type SocketKind = 'tcp' | 'unix' | 'udp' | 'unix-datagram' | 'unix-seqpacket';
export type AddressFamily = 'inet' | 'unix';

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
  fd: number;
}

/** The kind-specific behaviour every socket of a kind shares. */
export interface KindSpec {
  readonly kind: SocketKind;
  readonly family: AddressFamily;
  /** What an inherited fd of this kind must be. */
  readonly type: 'stream' | 'dgram' | 'seqpacket';
  readonly listening: boolean;
  /**
   * A full stop is about to close the socket: stop letting new peers in first
   * (TCP: drop SYNs, so clients see a clean refusal; Unix: unlink the path), so
   * that what is already queued can be taken before the close resets it.
   */
  refuseNew(socket: SocketRecord): Promise<void>;
  /** Undo refuseNew where it can be undone (a SYN filter): the socket serves again. */
  readmit(socket: SocketRecord): void;
  /** Peers let in and not yet taken (an accept queue, unread datagrams). */
  hasQueued(socket: SocketRecord): boolean;
}

/**
 * A validated request for a socket of some kind, made by the kind's module from
 * the application's options; the state machine carries it out.
 */
export interface ListenRequest<L> {
  spec: KindSpec;
  /** The application's hand-over name, if it gave one. */
  name: string | undefined;
  /** The key derived from the requested address. */
  key: string;
  /** Port 0: the nth such request matches the nth one of the previous generation. */
  numbered: boolean;
  /** The requested address, to find an inherited socket by. */
  address: BoundAddress;
  /** Create the socket (nothing is left behind if it fails). */
  create(): Promise<Omit<SocketRecord, 'key' | 'kind'>>;
  /** Undo create() (the generation started exiting meanwhile). */
  discard(created: Omit<SocketRecord, 'key' | 'kind'>): Promise<void>;
  /** The listener on the socket (inherited or created). */
  listener(socket: SocketRecord & { inherited: boolean }): L;
}

/**
 * Why an inherited fd cannot be what the hello says it is, or undefined when
 * it can: the right domain and type, listening or not, bound where it says.
 */
export function inheritedMismatch(spec: KindSpec, description: FdDescription, socket: SocketRecord): string | undefined {
  const domains = spec.family === 'unix' ? ['unix'] : ['inet', 'inet6'];
  if (!description.socket || description.type !== spec.type || !domains.includes(description.domain ?? '') || Boolean(description.listening) !== spec.listening) {
    const found = description.socket
      ? `${description.domain} ${description.type}${description.listening ? ', listening' : ', not listening'}`
      : 'a non-socket';
    return `is not ${spec.listening ? 'a listening' : 'a bound'} ${spec.kind} socket (found ${found})`;
  }
  if (spec.family === 'unix') {
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
  if (isIPv6(unzoned)) return new URL(`http://[${unzoned}]/`).hostname.slice(1, -1);
  return unzoned;
}

/** Same inet address: same host, and the same port unless 0 was asked for. */
export function sameInetAddress(bound: BoundAddress, requested: BoundAddress): boolean {
  return sameHost(bound.host ?? '', requested.host ?? '') && (requested.port === 0 || bound.port === requested.port);
}

// --- option validation shared by the kinds ----------------------------------------

/** Options must be an object naming only known options (a typo is an error, not a silent default). */
export function checkOptions(options: unknown, known: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidOption('options', 'must be an object', options);
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) {
      throw invalidOption(`options.${name}`, `is not an option (known: ${known.join(', ')})`, (options as Record<string, unknown>)[name]);
    }
  }
  return options as Record<string, unknown>;
}

export function optionalBoolean(options: Record<string, unknown>, name: string, fallback: boolean): boolean {
  return options[name] === undefined ? fallback : validateBoolean(options[name], `options.${name}`);
}

export function optionalInteger(options: Record<string, unknown>, name: string, fallback: number, min: number, max: number): number {
  return options[name] === undefined ? fallback : validateInteger(options[name], `options.${name}`, min, max);
}

export function optionalName(options: Record<string, unknown>): string | undefined {
  const name = options.name;
  if (name !== undefined && (typeof name !== 'string' || name === '')) throw invalidOption('options.name', 'must be a non-empty string', name);
  return name as string | undefined;
}

/** A Unix socket address: a filesystem path, or a Linux abstract name starting with '\0'. */
export function validateUnixPath(path: unknown): string {
  if (typeof path !== 'string' || path === '' || path === '\0' || path.indexOf('\0', 1) !== -1) {
    throw invalidOption('path', 'must be a filesystem path or an abstract name starting with "\\0"', path);
  }
  return path;
}

/** The default backlog, as Node's. */
export const DEFAULT_BACKLOG = 511;
/** The largest socket buffer size asked for (the kernel caps it at net.core.*mem_max). */
export const MAX_BUFFER_SIZE = 2_147_483_647;
