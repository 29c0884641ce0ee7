/** Unix datagram sockets (a filesystem path or an abstract name). */
import { closeQuietly, native } from '../internal/native.ts';
import { DatagramSocket } from '../listeners/datagram-socket.ts';
import { bufferSizes, checkOptions, optionalBoolean, optionalName, validateUnixPath, type KindSpec, type ListenRequest } from './kind.ts';
import { hasUnread } from './udp.ts';
import { optionalMode } from './unix.ts';
import { bindPath, fullPath, keyPath, refusesConnections, unlinkIfSame } from './unix-path.ts';

/** Options of {@link Ecdysis.listenUnixDatagram}. */
export interface UnixDatagramListenOptions {
  /** File mode of a filesystem socket, set right after bind (e.g. 0o660); permission bits only. */
  mode?: number;
  /** SO_RCVBUF in bytes. Default: the kernel's. */
  recvBufferSize?: number;
  /** SO_SNDBUF in bytes. Default: the kernel's. */
  sendBufferSize?: number;
  /** Keep reading through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
}

const OPTIONS = ['mode', 'recvBufferSize', 'sendBufferSize', 'stopOnShutdown', 'name'] as const;

export const unixDatagram: KindSpec = {
  kind: 'unix-datagram',
  family: 'unix',
  type: 'dgram',
  listening: false,
  async refuseNew(socket) {
    // Once the path is gone nobody new can send to it.
    if (socket.path && socket.pathInode !== undefined) await unlinkIfSame(socket.path, socket.pathInode);
  },
  readmit() {},
  hasQueued: (socket) => hasUnread(socket.fd),
};

export async function unixDatagramRequest(path: string, input: UnixDatagramListenOptions | undefined): Promise<ListenRequest<DatagramSocket>> {
  validateUnixPath(path);
  const options = checkOptions(input, OPTIONS);
  const sizes = bufferSizes(options);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const mode = optionalMode(options);
  const name = optionalName(options);
  const full = fullPath(path);
  return {
    spec: unixDatagram,
    name,
    key: `unix-datagram:${keyPath(full)}`,
    numbered: false,
    address: { path: full },
    create: () => bindPath(full, mode, () => native().bindUnixDatagram(full, sizes), (p) => refusesConnections(p, 'dgram')),
    async discard(created) {
      closeQuietly(created.fd);
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    listener: (socket) => new DatagramSocket({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, path: full }),
  };
}
