/**
 * What the state machine, the registry and the protocol need to know about a
 * kind of socket, in one place per kind: how its options are validated, its
 * hand-over key, how it is created, what an inherited fd of it must be, and how
 * it stops. Adding a kind: docs/architecture.md ("Where a change goes").
 */
import { dns } from '../internal/builtins.ts';
import { isIP } from 'node:net';
import { EcdysisError, invalidOption } from '../errors.ts';
import { native } from '../internal/native.ts';
import { optionalBoolean, optionalInteger, validateInteger } from '../internal/validate.ts';
import type { BoundAddress, SocketFacts, SocketKind, SocketRecord } from '../wire/sockets.ts';

export type { AddressFamily, BoundAddress, SocketKind, SocketRecord } from '../wire/sockets.ts';


/** The kind-specific behaviour every socket of a kind shares (its facts: wire/sockets.ts). */
export interface KindSpec extends SocketFacts {
  readonly kind: SocketKind;
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
  /** A socket systemd passed (LISTEN_FDNAMES), asked for by name: found by key only, never created. */
  systemd: string | undefined;
  /** Create the socket (nothing is left behind if it fails). */
  create(): Promise<Omit<SocketRecord, 'key' | 'kind'>>;
  /**
   * TCP and UDP: one more socket of a SO_REUSEPORT group, bound where `bound`
   * is (a worker group's member; `bound` has SO_REUSEPORT).
   */
  member?(bound: SocketRecord): Promise<Omit<SocketRecord, 'key' | 'kind'>>;
  /** Undo create() (the generation started exiting meanwhile). */
  discard(created: Omit<SocketRecord, 'key' | 'kind'>): Promise<void>;
  /**
   * An inherited socket was claimed for this request: apply what this release
   * asks of it that the socket itself does not carry (a Unix file's mode and
   * group). Synchronous: nothing may come between the claim and the listener.
   */
  adopt?(socket: SocketRecord): void;
  /** The listener on the socket (inherited or created). */
  listener(socket: SocketRecord & { inherited: boolean }): L;
}

// --- option validation shared by the kinds ----------------------------------------

export { checkOptions, optionalBoolean, optionalInteger } from '../internal/validate.ts';

export function optionalName(options: Record<string, unknown>): string | undefined {
  const name = options.name;
  if (name !== undefined && (typeof name !== 'string' || name === '')) throw invalidOption('options.name', 'must be a non-empty string', name);
  if (name !== undefined && options.systemd !== undefined) throw invalidOption('options.name', 'cannot be given with options.systemd (the systemd name is the key)', name);
  return name as string | undefined;
}

/** `systemd`: the name of a socket systemd passed (FileDescriptorName=). */
export function optionalSystemdName(options: Record<string, unknown>): string | undefined {
  const name = options.systemd;
  if (name === undefined) return undefined;
  if (typeof name !== 'string' || name === '' || name.includes(':') || name.length > 255) {
    throw invalidOption('options.systemd', 'must be a socket name as in FileDescriptorName= (1-255 characters, no ":")', name);
  }
  return name;
}

/** The key of a socket systemd passed by that name. */
export function systemdKey(name: string): string {
  return `systemd:${name}`;
}

/** A request for a socket only systemd can give: creating it is an error. */
export async function notPassedBySystemd(name: string): Promise<never> {
  throw new EcdysisError(
    'ERR_ECDYSIS_SYSTEMD',
    `no socket named "${name}" was passed by systemd (LISTEN_FDNAMES) or handed over by the previous generation`,
  );
}

/** A Unix socket address: a filesystem path, or a Linux abstract name starting with '\0'. */
export function validateUnixPath(path: unknown): string {
  if (typeof path !== 'string' || path === '' || path === '\0' || path.indexOf('\0', 1) !== -1) {
    throw invalidOption('path', 'must be a filesystem path or an abstract name starting with "\\0"', path);
  }
  return path;
}

/** Socket options that apply to inet sockets of every kind (TCP and UDP). */
export interface InetOptions {
  /** SO_REUSEPORT. Default false. */
  reusePort?: boolean;
  /** IPV6_V6ONLY for an IPv6 host. Default false. */
  ipv6Only?: boolean;
  /** IP_FREEBIND: bind an address not (yet) configured on this host. Default false. */
  freebind?: boolean;
  /** IP_TRANSPARENT, for transparent proxies (needs CAP_NET_ADMIN). Default false. */
  transparent?: boolean;
  /** SO_RCVBUF in bytes (the kernel doubles it and caps it at net.core.rmem_max). Default: the kernel's. */
  recvBufferSize?: number;
  /** SO_SNDBUF in bytes. Default: the kernel's. */
  sendBufferSize?: number;
}

export const INET_OPTIONS = ['reusePort', 'ipv6Only', 'freebind', 'transparent', 'recvBufferSize', 'sendBufferSize'] as const;

/** The validated inet options, with SO_REUSEADDR always on (a restart must not wait for TIME_WAIT). */
export function inetOptions(options: Record<string, unknown>) {
  return {
    reuseAddr: true,
    reusePort: optionalBoolean(options, 'reusePort', false),
    ipv6Only: optionalBoolean(options, 'ipv6Only', false),
    freebind: optionalBoolean(options, 'freebind', false),
    transparent: optionalBoolean(options, 'transparent', false),
    ...bufferSizes(options),
  };
}

export function bufferSizes(options: Record<string, unknown>): { recvBufferSize: number; sendBufferSize: number } {
  return {
    recvBufferSize: optionalInteger(options, 'recvBufferSize', 0, 1, MAX_BUFFER_SIZE),
    sendBufferSize: optionalInteger(options, 'sendBufferSize', 0, 1, MAX_BUFFER_SIZE),
  };
}

/** The requested host: a string (an IP, or a name resolved once), '::' by default. */
export async function resolveHost(options: Record<string, unknown>): Promise<{ requested: string; host: string }> {
  const requested = options.host ?? '::';
  if (typeof requested !== 'string' || requested === '') throw invalidOption('options.host', 'must be a non-empty string', options.host);
  const host = isIP(requested) ? requested : (await dns().promises.lookup(requested)).address;
  return { requested, host };
}

/** The key part for a host: IPv6 in brackets. */
export function keyHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/**
 * Create an inet socket; the default dual-stack host falls back to 0.0.0.0 on
 * a machine without IPv6. Returns the fd and the address the kernel bound.
 */
export function createInet(
  hostGiven: boolean,
  host: string,
  port: number,
  make: (host: string, ipv6Only: boolean | undefined) => number,
): { fd: number; host: string; port: number } {
  let fd: number;
  try {
    fd = make(host, undefined);
  } catch (err) {
    if (hostGiven || (err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
    fd = make('0.0.0.0', false);
  }
  const bound = native().describe(fd);
  return { fd, host: bound.address ?? host, port: bound.port ?? port };
}

/**
 * The address part of a TCP or UDP request: a socket systemd passed by name
 * (port and host then optional), or host and port; `bind` makes the socket
 * (ipv6Only undefined: as asked).
 */
export async function inetAddress(
  kind: 'tcp' | 'udp',
  options: Record<string, unknown>,
  bind: (host: string, port: number, ipv6Only: boolean | undefined, reusePort?: true) => number,
): Promise<Pick<ListenRequest<unknown>, 'systemd' | 'key' | 'numbered' | 'address' | 'create' | 'member'>> {
  const systemd = optionalSystemdName(options);
  const port = systemd !== undefined && options.port === undefined ? 0 : validateInteger(options.port, 'options.port', 0, 65535);
  const { requested, host } = systemd !== undefined && options.host === undefined ? { requested: '', host: '' } : await resolveHost(options);
  return {
    systemd,
    key: systemd !== undefined ? systemdKey(systemd) : `${kind}:${keyHost(requested)}:${port}`,
    numbered: port === 0,
    address: { host, port },
    create: async () =>
      systemd !== undefined ? notPassedBySystemd(systemd) : createInet(options.host !== undefined, host, port, (bindHost, ipv6Only) => bind(bindHost, port, ipv6Only)),
    member: async (bound) => createInet(true, bound.host!, bound.port!, (bindHost) => bind(bindHost, bound.port!, undefined, true)),
  };
}

/** The default backlog, as Node's. */
export const DEFAULT_BACKLOG = 511;
/** The largest socket buffer size asked for (the kernel caps it at net.core.*mem_max). */
export const MAX_BUFFER_SIZE = 2_147_483_647;

/** Datagrams waiting in the kernel's buffer, not read yet. */
export function hasUnread(fd: number): boolean {
  try {
    return native().pendingBytes(fd) > 0;
  } catch {
    return false;
  }
}
