/**
 * A bound Unix datagram socket owned by the registry. Node has no Unix datagram
 * sockets: the addon reads it (a poll handle on a duplicate, while a consumer
 * wants datagrams); the kernel buffers the rest.
 */
import { native, type PacketSocket } from '../internal/native.ts';
import { Datagram, DatagramListener, type DatagramData } from './datagram-listener.ts';
import type { ListenerConfig } from './base-listener.ts';

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
