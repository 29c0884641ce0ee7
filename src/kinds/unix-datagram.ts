/** Unix datagram sockets (a filesystem path or an abstract name). */
import { native } from '../internal/native.ts';
import { DatagramSocket } from '../listeners/datagram-socket.ts';
import { bufferSizes, checkOptions, optionalBoolean, type KindSpec, type ListenRequest } from './kind.ts';
import { hasUnread } from './udp.ts';
import { refusesConnections, unlinkIfSame } from './unix-path.ts';
import { unixRequest } from './unix-request.ts';

/** Options of {@link Ecdysis.listenUnixDatagram}. */
export interface UnixDatagramListenOptions {
  /** File mode of a filesystem socket, which is created with it (e.g. 0o660); permission bits only. */
  mode?: number;
  /** SO_RCVBUF in bytes. Default: the kernel's. */
  recvBufferSize?: number;
  /** SO_SNDBUF in bytes. Default: the kernel's. */
  sendBufferSize?: number;
  /** Keep reading through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the path. */
  name?: string;
  /** The name of a socket systemd passed (FileDescriptorName=): adopted, never created. */
  systemd?: string;
}

const OPTIONS = ['mode', 'recvBufferSize', 'sendBufferSize', 'stopOnShutdown', 'name', 'systemd'] as const;

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

export async function unixDatagramRequest(path: string | undefined, input: UnixDatagramListenOptions | undefined): Promise<ListenRequest<DatagramSocket>> {
  const options = checkOptions(input, OPTIONS);
  const sizes = bufferSizes(options);
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  return unixRequest(
    unixDatagram,
    path,
    options,
    // SO_PASSCRED from the start: every datagram carries its sender's uid (for replies).
    (full, file) => native().bindUnixDatagram(full, { ...sizes, ...file, passCredentials: true }),
    (p) => refusesConnections(p, 'dgram'),
    (socket, full) => new DatagramSocket({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, path: full }),
  );
}
