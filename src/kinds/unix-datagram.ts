/** Unix datagram sockets (a filesystem path or an abstract name). */
import { bufferSizes, checkOptions, hasUnread, optionalBoolean, type KindSpec, type ListenRequest } from './kind.ts';
import { refusesConnections, unlinkIfSame } from './unix-path.ts';
import { unixRequest } from './unix-request.ts';
import { native, type PacketSocket } from '../internal/native.ts';
import { Datagram, DatagramListener, type DatagramData } from '../listeners/datagram-listener.ts';
import type { ListenerConfig } from '../listeners/base-listener.ts';
import { localKinds, localMode, unsupportedInLocalMode } from '../internal/local-mode.ts';

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
  if (localMode()) throw unsupportedInLocalMode('listenUnixDatagram() is unavailable', `Node has no Unix datagram sockets; ${localKinds()}`);
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

/**
 * A bound Unix datagram socket owned by the registry. Node has no Unix datagram
 * sockets: the addon reads it (a poll handle on a duplicate, while a consumer
 * wants datagrams); the kernel buffers the rest.
 */
export class DatagramSocket extends DatagramListener {
  readonly kind = 'unix-datagram' as const;
  /** The bound path; an abstract name starts with '\0'. */
  readonly path: string;
  #reader: PacketSocket | undefined;

  /** @internal */
  constructor(config: ListenerConfig & { path: string }) {
    super(config);
    this.path = config.path;
  }

  /** The bound path. */
  address(): string {
    return this.path;
  }

  /**
   * Send one datagram to the Unix socket at `path` ('\0' prefix: abstract);
   * resolves once it is handed to the kernel.
   */
  send(data: DatagramData, path: string): Promise<void> {
    return this.sendTo(data, path, 0);
  }

  protected override sendNow(data: Buffer | Uint8Array, address: string, _port: number, owner?: number): Promise<void> | undefined {
    const reader = this.#reader;
    if (!reader) return undefined;
    try {
      // Queued beyond the kernel's buffer: the native queue sends it when it can.
      reader.send(data, address, undefined, owner);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
  }

  protected override startServing(fd: number): void {
    let reader: PacketSocket;
    try {
      reader = new (native().PacketSocket)(
        fd,
        'datagram',
        {
          onMessage: (data, address, _port, _fds, sender) => this.feed.push(new Datagram(this, data, address ?? '', 0, 'unix', sender?.uid)),
          // A datagram too large for the buffer is dropped and reported; reading goes on.
          onError: () => {},
        },
        // Each sender's uid, which a reply to its path must own (Datagram#reply).
        { credentials: true },
      );
    } catch (err) {
      native().close(fd);
      return this.fail(err as Error);
    }
    this.#reader = reader;
    reader.startReading();
  }

  protected override stopServing(): void {
    const reader = this.#reader;
    this.#reader = undefined;
    reader?.close();
  }
}
