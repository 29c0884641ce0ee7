/** Unix stream listening sockets (a filesystem path or an abstract name). */
import { closeQuietly, native } from '../internal/native.ts';
import { UnixListener } from '../listeners/unix-listener.ts';
import { DEFAULT_BACKLOG, checkOptions, optionalBoolean, optionalInteger, optionalName, validateUnixPath, type KindSpec, type ListenRequest } from './kind.ts';
import { bindPath, fullPath, keyPath, unlinkIfSame } from './unix-path.ts';

/** Options of {@link Ecdysis.listenUnix}. */
export interface UnixListenOptions {
  /** Listen backlog. Default 511. */
  backlog?: number;
  /** File mode of a filesystem socket, set right after bind (e.g. 0o660); permission bits only. */
  mode?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
  /** Accepted sockets keep their writable side after the peer ends. Default false. */
  allowHalfOpen?: boolean;
}

const OPTIONS = ['backlog', 'mode', 'stopOnShutdown', 'name', 'allowHalfOpen'] as const;

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
    try {
      return native().hasPendingConnection(socket.fd);
    } catch {
      return false;
    }
  },
};

/** Validate a Unix socket file mode: permission bits only (setuid and friends mean nothing here and hide mistakes). */
export function optionalMode(options: Record<string, unknown>): number | undefined {
  return options.mode === undefined ? undefined : optionalInteger(options, 'mode', 0, 0, 0o777);
}

export async function unixRequest(path: string, input: UnixListenOptions | undefined): Promise<ListenRequest<UnixListener>> {
  validateUnixPath(path);
  const options = checkOptions(input, OPTIONS);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const allowHalfOpen = optionalBoolean(options, 'allowHalfOpen', false);
  const mode = optionalMode(options);
  const name = optionalName(options);
  const full = fullPath(path);
  return {
    spec: unix,
    name,
    key: `unix:${keyPath(full)}`,
    numbered: false,
    address: { path: full },
    create: () => bindPath(full, mode, () => native().listenUnix(full, backlog)),
    async discard(created) {
      closeQuietly(created.fd);
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    listener(socket) {
      return new UnixListener({ key: socket.key, fd: socket.fd, backlog, inherited: socket.inherited, stopOnShutdown, allowHalfOpen, path: full });
    },
  };
}
