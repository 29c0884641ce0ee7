import { StreamListener, type StreamListenerConfig } from './stream-listener.ts';

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
