/**
 * What UDP and Unix datagram sockets share: datagrams as an async iterable and
 * an Observable, replies, and sends that keep working while this generation
 * does not read (after an upgrade committed, until its drain ends).
 */
import type { Observable } from 'rxjs';
import { EcdysisError } from '../errors.ts';
import { native, type NativeSystemError, type PacketSocket } from '../internal/native.ts';
import { BaseListener, type ListenerConfig } from './base-listener.ts';
import type { IterateOptions } from './feed.ts';

/** Datagrams read ahead for an iterator that is busy; beyond that, reading pauses (the kernel buffers). */
const MAX_PENDING = 1024;

export type DatagramFamily = 'IPv4' | 'IPv6' | 'unix';

/** Data a datagram socket can send. */
export type DatagramData = Buffer | Uint8Array | string;

/** One datagram received, and how to answer it. */
export class Datagram {
  /** The payload, boundaries kept. */
  readonly data: Buffer;
  /** The sender: an IP address, or a Unix path ('' for an unbound Unix sender; abstract names start with '\0'). */
  readonly address: string;
  /** The sender's port (0 for Unix). */
  readonly port: number;
  readonly family: DatagramFamily;
  readonly #socket: DatagramListener;
  /** Unix: the sender's uid (SCM_CREDENTIALS), when the datagram carried it. */
  readonly #senderUid: number | undefined;

  /** @internal */
  constructor(socket: DatagramListener, data: Buffer, address: string, port: number, family: DatagramFamily, senderUid?: number) {
    this.#socket = socket;
    this.data = data;
    this.address = address;
    this.port = port;
    this.family = family;
    this.#senderUid = senderUid;
  }

  /**
   * Send `data` back to the sender, from the socket this datagram came in on.
   * A Unix sender bound to a path is answered only at a socket file it owns:
   * its path is opened without following a symlink there, and the reply goes
   * through that very file. (A sender could otherwise put a symlink to any
   * socket at its address and have the service write there with its own
   * credentials.) Abstract names have no file and are answered as they are.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_NO_ADDRESS (as a rejection) when the sender is an unbound Unix socket;
   * ERR_ECDYSIS_REPLY_REFUSED when its path is not a socket file it owns, or it sent no credentials.
   */
  reply(data: DatagramData): Promise<void> {
    if (this.family !== 'unix' || this.address.startsWith('\0')) return this.#socket.sendTo(data, this.address, this.port);
    if (this.address === '') {
      return Promise.reject(new EcdysisError('ERR_ECDYSIS_NO_ADDRESS', 'the sender of this datagram is an unbound Unix socket: there is no address to reply to'));
    }
    if (this.#senderUid === undefined) {
      return Promise.reject(
        new EcdysisError('ERR_ECDYSIS_REPLY_REFUSED', `no reply to ${this.address}: the datagram carries no sender credentials (it was queued before the socket asked for them), so whose file that is cannot be checked`),
      );
    }
    return this.#socket.sendTo(data, this.address, 0, this.#senderUid).catch((err: NodeJS.ErrnoException) => {
      if (err.syscall === 'sendto' && (err.code === 'ENOTSOCK' || err.code === 'EPERM')) {
        throw new EcdysisError('ERR_ECDYSIS_REPLY_REFUSED', `no reply to ${this.address}: ${err.message}`, { cause: err });
      }
      throw err;
    });
  }
}

interface PendingSend {
  resolve: () => void;
  reject: (err: Error) => void;
}

export abstract class DatagramListener extends BaseListener<Datagram> implements AsyncIterable<Datagram> {
  /** Sends while nothing reads: a close-on-exec duplicate that is never read from. */
  #sender: PacketSocket | undefined;
  readonly #unsent: PendingSend[] = [];
  /** Undefined in local mode, where sendNow() always has the socket Node holds. */
  readonly #fd: number | undefined;
  #disposed = false;

  protected constructor(config: ListenerConfig) {
    super(config, MAX_PENDING);
    this.#fd = config.fd;
  }

  /**
   * The datagrams as a cold Observable: subscribing starts reading (once the
   * generation is ready), unsubscribing stops (datagrams wait in the kernel's
   * buffer). It completes when this generation is done serving.
   *
   * @example
   * dns.messages().pipe(mergeMap(async (msg) => msg.reply(await answer(msg.data)))).subscribe();
   */
  messages(): Observable<Datagram> {
    return this.feed.observable();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Datagram> {
    return this.iterate();
  }

  /** The datagrams as an async iterator that ends when this generation is done serving. */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<Datagram> {
    return this.feed.iterate(options);
  }

  /**
   * @internal Send one datagram; resolves once it is handed to the kernel.
   * Works as long as this generation lives, reading or not: an old generation
   * answers what it read until its drain ends.
   */
  sendTo(data: DatagramData, address: string, port: number, owner?: number): Promise<void> {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    if (this.#disposed) return Promise.reject(new EcdysisError('ERR_ECDYSIS_STOPPING', `${this.key}: this generation is done; it can no longer send`));
    return this.sendNow(bytes, address, port, owner) ?? this.#sendNatively(bytes, address, port, owner);
  }

  /**
   * Send through the reading socket if there is one (undefined: there is none
   * now). `owner`: Unix paths only, see PacketSocket#send.
   */
  protected abstract sendNow(data: Buffer | Uint8Array, address: string, port: number, owner?: number): Promise<void> | undefined;

  #sendNatively(data: Buffer | Uint8Array, address: string, port: number, owner: number | undefined): Promise<void> {
    try {
      this.#sender ??= this.#openSender();
      if (this.#sender.send(data, address, port, owner) && this.#sender.writableLength === 0) return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => this.#unsent.push({ resolve, reject }));
  }

  /**
   * A stop or a commit: take the sender now, while the registry's fd is surely
   * this socket's. A full stop closes that fd next, and its number may then be
   * given to any socket the process opens: a duplicate taken later would fail
   * (EBADF) or, worse, send from the wrong socket.
   */
  protected override onShuttingDown(): void {
    if (this.#fd === undefined || this.#sender || this.#disposed) return;
    try {
      this.#sender = this.#dupSender(this.#fd);
    } catch {
      // Out of fds: the replies made during the drain are refused (#openSender, below).
    }
  }

  #openSender(): PacketSocket {
    // Once shutting down, the fd may be closed or reused: only a sender taken at the start of it is sure.
    if (this.#fd === undefined || this.shuttingDown) throw new EcdysisError('ERR_ECDYSIS_STOPPING', `${this.key}: the socket is closed; the datagram was not sent`);
    return this.#dupSender(this.#fd);
  }

  #dupSender(registryFd: number): PacketSocket {
    const fd = native().dupCloexec(registryFd);
    let sender: PacketSocket;
    try {
      sender = new (native().PacketSocket)(fd, 'datagram', {
        onMessage: () => {},
        onError: (err: NativeSystemError) => {
          for (const pending of this.#unsent.splice(0)) pending.reject(err);
        },
        onDrain: () => {
          for (const pending of this.#unsent.splice(0)) pending.resolve();
        },
      });
    } catch (err) {
      native().close(fd);
      throw err;
    }
    // Sending must never keep an otherwise finished process alive.
    sender.unref();
    return sender;
  }

  /** @internal The generation is done: nothing more is sent. */
  override dispose(): void {
    this.#disposed = true;
    this.#sender?.close();
    this.#sender = undefined;
    const error = new EcdysisError('ERR_ECDYSIS_STOPPING', `${this.key}: this generation is done; the datagram was not sent`);
    for (const pending of this.#unsent.splice(0)) pending.reject(error);
  }

  protected override discardItem(): void {
    // A datagram nobody takes is simply dropped.
  }
}
