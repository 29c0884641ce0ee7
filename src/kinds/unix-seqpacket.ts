/** Unix seqpacket listening sockets (a filesystem path or an abstract name). */
import { DEFAULT_BACKLOG, checkOptions, optionalBoolean, optionalInteger, type KindSpec, type ListenRequest } from './kind.ts';
import { unix } from './unix.ts';
import { refusesConnections } from './unix-path.ts';
import { unixRequest } from './unix-request.ts';
import type { Observable } from 'rxjs';
import { native, type SeqpacketServer } from '../internal/native.ts';
import { BaseListener, type ListenerConfig } from '../listeners/base-listener.ts';
import type { IterateOptions } from '../listeners/feed.ts';
import { SeqpacketSocket } from '../listeners/seqpacket-socket.ts';
import { localKinds, localMode, unsupportedInLocalMode } from '../internal/local-mode.ts';

/** Options of {@link Ecdysis.listenUnixSeqpacket}. */
export interface UnixSeqpacketListenOptions {
  /** Listen backlog. Default 511. */
  backlog?: number;
  /** File mode of a filesystem socket, which is created with it (e.g. 0o660); permission bits only. */
  mode?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
  /** The name of a socket systemd passed (FileDescriptorName=, ListenSequentialPacket=): adopted, never created. */
  systemd?: string;
}

const OPTIONS = ['backlog', 'mode', 'stopOnShutdown', 'name', 'systemd'] as const;

export const unixSeqpacket: KindSpec = {
  ...unix,
  kind: 'unix-seqpacket',
  type: 'seqpacket',
};

export async function unixSeqpacketRequest(path: string | undefined, input: UnixSeqpacketListenOptions | undefined): Promise<ListenRequest<SeqpacketListener>> {
  const options = checkOptions(input, OPTIONS);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  if (localMode()) throw unsupportedInLocalMode('listenUnixSeqpacket() is unavailable', `Node has no Unix seqpacket sockets; ${localKinds()}`);
  return unixRequest(
    unixSeqpacket,
    path,
    options,
    (full, file) => native().listenUnix(full, backlog, 'seqpacket', file),
    (p) => refusesConnections(p, 'seqpacket'),
    (socket, full) => new SeqpacketListener({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, path: full }),
  );
}

/**
 * A listening Unix seqpacket socket owned by the registry: its connections
 * (SeqpacketSocket) as an async iterable and an Observable, accepted on demand
 * by the addon, drained like stream connections.
 */
/** Connections accepted ahead for an iterator that is busy; beyond that, accepting pauses. */
const MAX_PENDING = 8;

export class SeqpacketListener extends BaseListener<SeqpacketSocket> implements AsyncIterable<SeqpacketSocket> {
  readonly kind = 'unix-seqpacket' as const;
  /** The bound path; an abstract name starts with '\0'. */
  readonly path: string;
  #server: SeqpacketServer | undefined;
  readonly #active = new Set<SeqpacketSocket>();

  /** @internal */
  constructor(config: ListenerConfig & { path: string }) {
    super(config, MAX_PENDING);
    this.path = config.path;
  }

  /** The bound path. */
  address(): string {
    return this.path;
  }

  /** Connections accepted by this generation that have not closed yet. */
  override get connectionCount(): number {
    return this.#active.size;
  }

  /** The accepted connections as a cold Observable; completes when this generation is done serving. */
  connections(): Observable<SeqpacketSocket> {
    return this.feed.observable();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<SeqpacketSocket> {
    return this.iterate();
  }

  /** The accepted connections as an async iterator that ends when this generation is done serving. */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<SeqpacketSocket> {
    return this.feed.iterate(options);
  }

  /** @internal */
  override activeConnections(): SeqpacketSocket[] {
    return [...this.#active];
  }

  protected override discardItem(socket: SeqpacketSocket): void {
    socket.destroy();
  }

  protected override startServing(fd: number): void {
    let server: SeqpacketServer;
    try {
      server = new (native().SeqpacketServer)(fd, {
        onConnection: (connection) => {
          const socket = new SeqpacketSocket(connection);
          this.#active.add(socket);
          socket.once('close', () => {
            this.#active.delete(socket);
            this.onConnectionClosed?.(socket);
          });
          this.feed.push(socket);
        },
        // Transient accept errors (EMFILE...): the addon pauses and retries.
        onError: () => {},
      });
    } catch (err) {
      native().close(fd);
      return this.fail(err as Error);
    }
    this.#server = server;
    server.start();
  }

  protected override stopServing(): void {
    const server = this.#server;
    this.#server = undefined;
    server?.close();
  }
}
