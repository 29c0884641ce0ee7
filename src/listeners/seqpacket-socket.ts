/**
 * One Unix seqpacket connection: messages with their boundaries kept, read on
 * demand (an async iterable and an Observable of Buffers), sent with
 * backpressure. Node has no seqpacket sockets: the addon drives it.
 */
import { EventEmitter } from 'node:events';
import type { Observable } from 'rxjs';
import { EcdysisError } from '../errors.ts';
import { native, type NativeSystemError, type PacketSocket, type PeerCredentials } from '../internal/native.ts';
import { Feed, type IterateOptions } from './feed.ts';

/** Messages read ahead for a busy iterator; beyond that, reading pauses (the kernel buffers). */
const MAX_PENDING = 64;

interface PendingSend {
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Events: 'end' (the peer closed its side), 'error', 'close' (the socket is
 * closed; always last).
 */
export class SeqpacketSocket extends EventEmitter implements AsyncIterable<Buffer> {
  readonly #socket: PacketSocket;
  readonly #feed: Feed<Buffer>;
  readonly #unsent: PendingSend[] = [];
  #reading = false;
  #destroyed = false;
  #peer: PeerCredentials | undefined;

  /** @internal Takes ownership of `fd`. */
  constructor(fd: number) {
    super();
    this.#feed = new Feed<Buffer>({ maxPending: MAX_PENDING, onDemand: () => this.#sync(), discard: () => {} });
    this.#socket = new (native().PacketSocket)(fd, 'connected', {
      onMessage: (data) => this.#feed.push(data),
      onEnd: () => {
        this.#feed.end();
        this.emit('end');
        // Both sides are done once our queued messages are out.
        if (this.#socket.writableLength === 0) this.destroy();
        else this.#socket.shutdown();
      },
      onError: (err: NativeSystemError) => {
        for (const pending of this.#unsent.splice(0)) pending.reject(err);
        if (this.listenerCount('error') > 0) this.emit('error', err);
        this.destroy();
      },
      onDrain: () => {
        for (const pending of this.#unsent.splice(0)) pending.resolve();
      },
    });
  }

  /** True once the socket is closed. */
  get destroyed(): boolean {
    return this.#destroyed;
  }

  /** Bytes queued for sending, beyond what the kernel took. */
  get writableLength(): number {
    return this.#destroyed ? 0 : this.#socket.writableLength;
  }

  /** The peer's process, user and group (SO_PEERCRED), as of its connect(). */
  peerCredentials(): PeerCredentials {
    this.#peer ??= native().peerCredentials(this.#socket.fd);
    return this.#peer;
  }

  /** The messages as a cold Observable; completes when the peer closes. */
  messages(): Observable<Buffer> {
    return this.#feed.observable();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Buffer> {
    return this.iterate();
  }

  /** The messages as an async iterator that ends when the peer closes. */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<Buffer> {
    return this.#feed.iterate(options);
  }

  /**
   * Send one message (boundaries kept); resolves once the kernel has it. Await
   * it for backpressure: it resolves late when the peer reads slowly.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION for an empty message (on
   * Linux it cannot be told from the end of the connection); system errors such
   * as EPIPE, as rejections.
   */
  send(message: Buffer | Uint8Array | string): Promise<void> {
    const data = typeof message === 'string' ? Buffer.from(message) : message;
    if (data.length === 0) return Promise.reject(new EcdysisError('ERR_ECDYSIS_INVALID_OPTION', 'a seqpacket message cannot be empty: on Linux it would read as the end of the connection', { option: 'message' }));
    if (this.#destroyed) return Promise.reject(Object.assign(new Error('send EPIPE: the socket is closed'), { code: 'EPIPE', syscall: 'send' }));
    try {
      if (this.#socket.send(data) && this.#socket.writableLength === 0) return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => this.#unsent.push({ resolve, reject }));
  }

  /** Close this side once the queued messages are out; the peer reads the end. */
  end(): void {
    if (!this.#destroyed) this.#socket.shutdown();
  }

  /** Close now, dropping what is queued. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    this.#socket.close();
    const error = Object.assign(new Error('send EPIPE: the socket was closed first'), { code: 'EPIPE', syscall: 'send' });
    for (const pending of this.#unsent.splice(0)) pending.reject(error);
    this.#feed.end();
    this.emit('close');
  }

  #sync(): void {
    if (this.#destroyed) return;
    const wanted = this.#feed.wanted;
    if (wanted && !this.#reading) this.#socket.startReading();
    else if (!wanted && this.#reading) this.#socket.stopReading();
    this.#reading = wanted;
  }
}
