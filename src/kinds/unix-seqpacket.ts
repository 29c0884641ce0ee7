/** Unix seqpacket listening sockets (a filesystem path or an abstract name). */
import { native } from '../internal/native.ts';
import { SeqpacketListener } from '../listeners/seqpacket-listener.ts';
import { DEFAULT_BACKLOG, checkOptions, optionalBoolean, optionalInteger, type KindSpec, type ListenRequest } from './kind.ts';
import { unix } from './unix.ts';
import { refusesConnections } from './unix-path.ts';
import { unixRequest } from './unix-request.ts';

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
  return unixRequest(
    unixSeqpacket,
    path,
    options,
    (full, file) => native().listenUnix(full, backlog, 'seqpacket', file),
    (p) => refusesConnections(p, 'seqpacket'),
    (socket, full) => new SeqpacketListener({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, path: full }),
  );
}
