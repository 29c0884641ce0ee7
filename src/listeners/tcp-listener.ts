import { StreamListener, type StreamListenerConfig } from './stream-listener.ts';

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
