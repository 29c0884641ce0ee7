/** TCP listening sockets (IPv4 and IPv6). */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { debuglog } from 'node:util';
import { invalidOption } from '../errors.ts';
import { closeQuietly, native } from '../internal/native.ts';
import { validateInteger } from '../internal/options.ts';
import { TcpListener } from '../listeners/tcp-listener.ts';
import {
  DEFAULT_BACKLOG,
  checkOptions,
  optionalBoolean,
  optionalInteger,
  optionalName,
  type KindSpec,
  type ListenRequest,
} from './kind.ts';

const debug = debuglog('ecdysis');

/** Options of {@link Ecdysis.listenTcp}. */
export interface TcpListenOptions {
  /** IP address or host name to bind. Default '::' (dual-stack), or '0.0.0.0' where IPv6 is off. */
  host?: string;
  /** Port; 0 picks a free one (the next generation asking for port 0 again gets the same socket). */
  port: number;
  /** Listen backlog. Default 511, like Node. */
  backlog?: number;
  /** SO_REUSEPORT. Default false. */
  reusePort?: boolean;
  /** IPV6_V6ONLY for an IPv6 host. Default false. */
  ipv6Only?: boolean;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the requested host and port. */
  name?: string;
  /** Accepted sockets keep their writable side after the peer ends. Default false. */
  allowHalfOpen?: boolean;
}

const OPTIONS = ['host', 'port', 'backlog', 'reusePort', 'ipv6Only', 'stopOnShutdown', 'name', 'allowHalfOpen'] as const;

export const tcp: KindSpec = {
  kind: 'tcp',
  family: 'inet',
  type: 'stream',
  listening: true,
  async refuseNew(socket) {
    try {
      native().refuseNewConnections(socket.fd);
    } catch (err) {
      debug('refuseNewConnections %s: %s', socket.key, (err as Error).message);
    }
  },
  readmit(socket) {
    try {
      native().acceptNewConnections(socket.fd);
    } catch {
      // No filter attached, or the fd is gone: nothing to undo.
    }
  },
  hasQueued(socket) {
    try {
      return native().acceptQueueLength(socket.fd) > 0;
    } catch {
      return false;
    }
  },
};

/** The key part for a host: IPv6 in brackets. */
export function keyHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

export async function tcpRequest(input: TcpListenOptions): Promise<ListenRequest<TcpListener>> {
  if (input === undefined) throw invalidOption('options', 'must be an object', input);
  const options = checkOptions(input, OPTIONS);
  const port = validateInteger(options.port, 'options.port', 0, 65535);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const reusePort = optionalBoolean(options, 'reusePort', false);
  const ipv6Only = optionalBoolean(options, 'ipv6Only', false);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const allowHalfOpen = optionalBoolean(options, 'allowHalfOpen', false);
  const requestedHost = options.host ?? '::';
  if (typeof requestedHost !== 'string' || requestedHost === '') throw invalidOption('options.host', 'must be a non-empty string', options.host);
  const name = optionalName(options);
  const host = isIP(requestedHost) ? requestedHost : (await lookup(requestedHost)).address;
  return {
    spec: tcp,
    name,
    key: `tcp:${keyHost(requestedHost)}:${port}`,
    numbered: port === 0,
    address: { host, port },
    async create() {
      let fd: number;
      let boundHost = host;
      try {
        fd = native().listenTcp(host, port, backlog, { reuseAddr: true, reusePort, ipv6Only });
      } catch (err) {
        // The default dual-stack host on a machine without IPv6.
        if (options.host !== undefined || (err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
        boundHost = '0.0.0.0';
        fd = native().listenTcp(boundHost, port, backlog, { reuseAddr: true, reusePort, ipv6Only: false });
      }
      const bound = native().describe(fd);
      return { fd, host: bound.address ?? boundHost, port: bound.port ?? port };
    },
    async discard(created) {
      closeQuietly(created.fd);
    },
    listener(socket) {
      return new TcpListener({
        key: socket.key,
        fd: socket.fd,
        backlog,
        inherited: socket.inherited,
        stopOnShutdown,
        allowHalfOpen,
        host: socket.host!,
        port: socket.port!,
      });
    },
  };
}
