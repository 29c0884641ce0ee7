/** Unix seqpacket listening sockets (a filesystem path or an abstract name). */
import { closeQuietly, native } from '../internal/native.ts';
import { SeqpacketListener } from '../listeners/seqpacket-listener.ts';
import { DEFAULT_BACKLOG, checkOptions, optionalBoolean, optionalInteger, optionalName, validateUnixPath, type KindSpec, type ListenRequest } from './kind.ts';
import { optionalMode, unix } from './unix.ts';
import { bindPath, fullPath, keyPath, refusesConnections, unlinkIfSame } from './unix-path.ts';

/** Options of {@link Ecdysis.listenUnixSeqpacket}. */
export interface UnixSeqpacketListenOptions {
  /** Listen backlog. Default 511. */
  backlog?: number;
  /** File mode of a filesystem socket, set right after bind (e.g. 0o660); permission bits only. */
  mode?: number;
  /** Keep accepting through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
}

const OPTIONS = ['backlog', 'mode', 'stopOnShutdown', 'name'] as const;

export const unixSeqpacket: KindSpec = {
  ...unix,
  kind: 'unix-seqpacket',
  type: 'seqpacket',
};

export async function unixSeqpacketRequest(path: string, input: UnixSeqpacketListenOptions | undefined): Promise<ListenRequest<SeqpacketListener>> {
  validateUnixPath(path);
  const options = checkOptions(input, OPTIONS);
  const backlog = optionalInteger(options, 'backlog', DEFAULT_BACKLOG, 1, 65535);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const mode = optionalMode(options);
  const name = optionalName(options);
  const full = fullPath(path);
  return {
    spec: unixSeqpacket,
    name,
    key: `unix-seqpacket:${keyPath(full)}`,
    numbered: false,
    address: { path: full },
    create: () => bindPath(full, mode, () => native().listenUnix(full, backlog, 'seqpacket'), (p) => refusesConnections(p, 'seqpacket')),
    async discard(created) {
      closeQuietly(created.fd);
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    listener: (socket) => new SeqpacketListener({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, path: full }),
  };
}
