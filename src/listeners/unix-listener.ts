import { StreamListener, type StreamListenerConfig } from './stream-listener.ts';

/** Options of {@link Ecdysis.listenUnix}. */
export interface UnixListenOptions {
  /** Listen backlog. Default 511. */
  backlog?: number;
  /** File mode of a filesystem socket, set right after bind (e.g. 0o660). */
  mode?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
  /** Accepted sockets keep their writable side after the peer ends. Default false. */
  allowHalfOpen?: boolean;
}

/** A listening Unix stream socket; see {@link StreamListener}. */
export class UnixListener extends StreamListener {
  readonly kind = 'unix' as const;
  /** The bound path; an abstract name starts with '\0'. */
  readonly path: string;

  /** @internal */
  constructor(config: StreamListenerConfig & { path: string }) {
    super(config);
    this.path = config.path;
  }

  /** Like net.Server#address() for a Unix socket. */
  address(): string {
    return this.path;
  }
}
