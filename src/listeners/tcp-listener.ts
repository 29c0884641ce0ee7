import { StreamListener, type StreamListenerConfig } from './stream-listener.ts';

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
