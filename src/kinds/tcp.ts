/** TCP listening sockets (IPv4 and IPv6). */
import { debuglog } from 'node:util';
import { invalidOption } from '../errors.ts';
import { closeQuietly, native } from '../internal/native.ts';
import {
  DEFAULT_BACKLOG,
  INET_OPTIONS,
  checkOptions,
  inetAddress,
  inetOptions,
  optionalBoolean,
  optionalInteger,
  optionalName,
  type InetOptions,
  type KindSpec,
  type ListenRequest,
} from './kind.ts';
import { StreamListener, type StreamListenerConfig } from '../listeners/stream-listener.ts';
import { localMode } from '../internal/local-mode.ts';
import { ignoreInLocalMode, listenLocalTcp, streamSource } from './local.ts';

const debug = debuglog('ecdysis');

/** Options of {@link Ecdysis.listenTcp}. */
export interface TcpListenOptions extends InetOptions {
  /** IP address or host name to bind. Default '::' (dual-stack), or '0.0.0.0' where IPv6 is off. */
  host?: string;
  /** Port; 0 picks a free one (the next generation asking for port 0 again gets the same socket). Not with `systemd`. */
  port?: number;
  /** The name of a socket systemd passed (FileDescriptorName=): adopted, never created. */
  systemd?: string;
  /** Listen backlog. Default 511, like Node. */
  backlog?: number;
  /** TCP_FASTOPEN queue length; 0 turns it off. Default 0. */
  fastOpen?: number;
  /** TCP_DEFER_ACCEPT: seconds a connection may wait for its first data before it is accepted. Default 0 (off). */
  deferAccept?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the requested host and port. */
  name?: string;
  /** Accepted sockets keep their writable side after the peer ends. Default false. */
  allowHalfOpen?: boolean;
}

const OPTIONS = ['host', 'port', 'backlog', ...INET_OPTIONS, 'fastOpen', 'deferAccept', 'stopOnShutdown', 'name', 'allowHalfOpen', 'systemd'] as const;

export const tcp: KindSpec = {
  kind: 'tcp',
  family: 'inet',
  type: 'stream',
  listening: true,
  async refuseNew(socket) {
    // Local mode: Node cannot drop SYNs; what connects before the close is accepted, or reset by it.
    if (socket.local) return;
    try {
      native().refuseNewConnections(socket.fd);
    } catch (err) {
      debug('refuseNewConnections %s: %s', socket.key, (err as Error).message);
    }
  },
  readmit(socket) {
    if (socket.local) return;
    try {
      native().acceptNewConnections(socket.fd);
    } catch {
      // No filter attached, or the fd is gone: nothing to undo.
    }
  },
  hasQueued(socket) {
    if (socket.local) return socket.local.queued;
    try {
      return native().acceptQueueLength(socket.fd) > 0;
    } catch {
      return false;
    }
  },
};

export async function tcpRequest(input: TcpListenOptions): Promise<ListenRequest<TcpListener>> {
  if (input === undefined) throw invalidOption('options', 'must be an object', input);
  const options = checkOptions(input, OPTIONS);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const flags = {
    ...inetOptions(options),
    fastOpen: optionalInteger(options, 'fastOpen', 0, 0, 65535),
    deferAccept: optionalInteger(options, 'deferAccept', 0, 0, 3600),
  };
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const allowHalfOpen = optionalBoolean(options, 'allowHalfOpen', false);
  const name = optionalName(options);
  const address = await inetAddress('tcp', options, (host, port, ipv6Only, reusePort) =>
    native().listenTcp(host, port, backlog, { ...flags, ...(ipv6Only === undefined ? {} : { ipv6Only }), ...(reusePort ? { reusePort } : {}) }),
  );
  if (localMode() && address.systemd === undefined) {
    ignoreInLocalMode('listenTcp', options, ['reusePort', 'freebind', 'transparent', 'recvBufferSize', 'sendBufferSize', 'fastOpen', 'deferAccept']);
    const { host, port } = address.address;
    address.create = () => listenLocalTcp(options.host !== undefined, host!, port!, { backlog, allowHalfOpen, ipv6Only: flags.ipv6Only });
  }
  return {
    spec: tcp,
    name,
    ...address,
    async discard(created) {
      if (created.local) created.local.close();
      else closeQuietly(created.fd);
    },
    listener(socket) {
      return new TcpListener({
        key: socket.key,
        ...streamSource(socket),
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

/** A listening TCP socket; see {@link StreamListener}. */
export class TcpListener extends StreamListener {
  readonly kind = 'tcp' as const;
  /** The bound address. */
  readonly host: string;
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number;

  /** @internal */
  constructor(config: StreamListenerConfig & { host: string; port: number }) {
    super(config);
    this.host = config.host;
    this.port = config.port;
  }

  /** Like net.Server#address(). */
  address(): { address: string; family: 'IPv4' | 'IPv6'; port: number } {
    return { address: this.host, family: this.host.includes(':') ? 'IPv6' : 'IPv4', port: this.port };
  }
}
