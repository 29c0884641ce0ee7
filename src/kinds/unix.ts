/** Unix stream listening sockets (a filesystem path or an abstract name). */
import { native } from '../internal/native.ts';
import { DEFAULT_BACKLOG, checkOptions, optionalBoolean, optionalInteger, type KindSpec, type ListenRequest } from './kind.ts';
import { unlinkIfSame } from './unix-path.ts';
import { optionalMode, unixRequest } from './unix-request.ts';
import { StreamListener, type StreamListenerConfig } from '../listeners/stream-listener.ts';
import { localKinds, localMode, unsupportedInLocalMode } from '../internal/local-mode.ts';
import { listenLocalUnix, streamSource } from './local.ts';

/** Options of {@link Ecdysis.listenUnix}. */
export interface UnixListenOptions {
  /** Listen backlog. Default 511. */
  backlog?: number;
  /** File mode of a filesystem socket, which is created with it (e.g. 0o660); permission bits only. */
  mode?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
  /** Accepted sockets keep their writable side after the peer ends. Default false. */
  allowHalfOpen?: boolean;
  /** The name of a socket systemd passed (FileDescriptorName=): adopted, never created. */
  systemd?: string;
}

const OPTIONS = ['backlog', 'mode', 'stopOnShutdown', 'name', 'allowHalfOpen', 'systemd'] as const;

export const unix: KindSpec = {
  kind: 'unix',
  family: 'unix',
  type: 'stream',
  listening: true,
  async refuseNew(socket) {
    // Once the path is gone nobody new can connect; the abstract namespace has no such step.
    if (socket.path && socket.pathInode !== undefined) await unlinkIfSame(socket.path, socket.pathInode);
  },
  readmit() {
    // Nothing to undo: an upgrade never unlinks.
  },
  hasQueued(socket) {
    if (socket.local) return socket.local.queued;
    try {
      return native().hasPendingConnection(socket.fd);
    } catch {
      return false;
    }
  },
};

export async function unixStreamRequest(path: string | undefined, input: UnixListenOptions | undefined): Promise<ListenRequest<UnixListener>> {
  const options = checkOptions(input, OPTIONS);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const allowHalfOpen = optionalBoolean(options, 'allowHalfOpen', false);
  const request = unixRequest(
    unix,
    path,
    options,
    (full, file) => native().listenUnix(full, backlog, 'stream', file),
    undefined,
    (socket, full) => new UnixListener({ key: socket.key, ...streamSource(socket), backlog, inherited: socket.inherited, stopOnShutdown, allowHalfOpen, path: full }),
  );
  if (localMode() && request.systemd === undefined) {
    // Node's "Unix" sockets on Windows are named pipes, which have no file to own or unlink.
    if (process.platform === 'win32') throw unsupportedInLocalMode('listenUnix() is unavailable on Windows', localKinds());
    const full = request.address.path!;
    const mode = optionalMode(options);
    request.create = () => listenLocalUnix(full, { backlog, allowHalfOpen, mode });
  }
  return request;
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
