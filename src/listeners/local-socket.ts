/**
 * The sockets of local mode (internal/local-mode.ts). Node creates each one and
 * is its only holder: there is no fd to duplicate, and Node has no way to stop
 * accepting (or reading) without closing the socket, which would refuse
 * connections. So a local socket accepts (reads) from its creation to its
 * close, hands what arrives to the listener attached to it, and while none is
 * (before ready(), nobody consuming) holds it, up to a bound, where a Linux
 * listener would leave it in the kernel's queue. While nothing is attached it
 * does not keep the process alive, as a Linux listener that does not accept
 * does not.
 */
import type { RemoteInfo, Socket as DgramSocket, SocketOptions } from 'node:dgram';
import { Server, type ListenOptions, type ServerOpts, type Socket } from 'node:net';
import { dgram } from '../internal/builtins.ts';
import type { LocalHandle } from '../internal/local-mode.ts';

abstract class LocalSocket<T> implements LocalHandle {
  #target: ((item: T) => void) | undefined;
  readonly #held: T[] = [];
  readonly #limit: number;
  #closed = false;

  protected constructor(limit: number) {
    this.#limit = limit;
  }

  get queued(): boolean {
    return this.#held.length > 0;
  }

  /** Hand every item to `target` from now on, those held first. */
  attach(target: (item: T) => void): void {
    if (this.#closed) return;
    this.#target = target;
    this.setRef(true);
    while (this.#held.length > 0 && this.#target === target) {
      const item = this.#held.shift()!;
      this.release(item);
      target(item);
    }
  }

  /** Hold what arrives from now on (up to the bound). */
  detach(): void {
    this.#target = undefined;
    this.setRef(false);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#target = undefined;
    for (const item of this.#held.splice(0)) this.drop(item);
    this.closeSocket();
  }

  /** Something arrived: to the listener, or held, or (beyond the bound, or closed) dropped. */
  protected take(item: T): void {
    if (this.#target) return this.#target(item);
    if (this.#closed || this.#held.length >= this.#limit) return this.drop(item);
    this.hold(item);
    this.#held.push(item);
  }

  /** A held item went away by itself (a connection closed by its peer). */
  protected forget(item: T): void {
    const index = this.#held.indexOf(item);
    if (index !== -1) this.#held.splice(index, 1);
  }

  protected hold(_item: T): void {}
  protected release(_item: T): void {}
  protected abstract drop(item: T): void;
  protected abstract setRef(on: boolean): void;
  protected abstract closeSocket(): void;
}

/** A listening TCP or Unix stream socket Node created (net.Server). */
export class LocalStreamSocket extends LocalSocket<Socket> {
  readonly server: Server;
  #onError: ((err: NodeJS.ErrnoException) => void) | undefined;

  private constructor(server: Server, limit: number) {
    super(limit);
    this.server = server;
    // Registered before listen(): no connection can come before it.
    server.on('connection', (socket: Socket) => this.take(socket));
  }

  /**
   * Listen (options as net.Server#listen: host and port, or path); resolves
   * once listening, rejects with Node's own error (EADDRINUSE...). Connections
   * nobody takes are held up to the backlog, then closed.
   */
  static listen(options: ListenOptions & { backlog: number }, serverOptions: ServerOpts): Promise<LocalStreamSocket> {
    const local = new LocalStreamSocket(new Server(serverOptions), options.backlog);
    const server = local.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(options, () => {
        server.off('error', reject);
        // Accept errors (EMFILE, ECONNABORTED) are transient: libuv keeps listening.
        server.on('error', (err: NodeJS.ErrnoException) => local.#onError?.(err));
        local.setRef(false);
        resolve(local);
      });
    });
  }

  /** Also tell `onError` what the server reports while attached. */
  attachServer(target: (socket: Socket) => void, onError: (err: NodeJS.ErrnoException) => void): void {
    this.#onError = onError;
    this.attach(target);
  }

  override detach(): void {
    this.#onError = undefined;
    super.detach();
  }

  // A held connection that errors (a reset) must not be an uncaught 'error'; it
  // is read into its buffer meanwhile, as the kernel would keep its bytes.
  static readonly #heldError = function (this: Socket): void {
    this.destroy();
  };

  readonly #heldClose = (socket: Socket) => () => this.forget(socket);
  readonly #closers = new WeakMap<Socket, () => void>();

  protected override hold(socket: Socket): void {
    socket.on('error', LocalStreamSocket.#heldError);
    const onClose = this.#heldClose(socket);
    this.#closers.set(socket, onClose);
    socket.once('close', onClose);
    socket.unref();
  }

  protected override release(socket: Socket): void {
    socket.off('error', LocalStreamSocket.#heldError);
    const onClose = this.#closers.get(socket);
    if (onClose) socket.off('close', onClose);
    socket.ref();
  }

  protected override drop(socket: Socket): void {
    socket.destroy();
  }

  protected override setRef(on: boolean): void {
    if (on) this.server.ref();
    else this.server.unref();
  }

  protected override closeSocket(): void {
    this.server.close();
  }
}

/** One datagram as dgram delivers it. */
export interface LocalDatagram {
  data: Buffer;
  info: RemoteInfo;
}

/** A bound UDP socket Node created (dgram.Socket). */
export class LocalDatagramSocket extends LocalSocket<LocalDatagram> {
  readonly socket: DgramSocket;

  private constructor(socket: DgramSocket, limit: number) {
    super(limit);
    this.socket = socket;
    socket.on('message', (data: Buffer, info: RemoteInfo) => this.take({ data, info }));
  }

  /**
   * Bind; resolves once bound, rejects with Node's own error. Datagrams nobody
   * reads are held up to `limit`, then dropped (as a full kernel buffer drops them).
   */
  static open(options: SocketOptions, host: string, port: number, limit: number): Promise<LocalDatagramSocket> {
    const local = new LocalDatagramSocket(dgram().createSocket(options), limit);
    const socket = local.socket;
    return new Promise((resolve, reject) => {
      const fail = (err: Error) => {
        socket.close();
        reject(err);
      };
      socket.once('error', fail);
      socket.bind({ address: host, port, exclusive: true }, () => {
        socket.off('error', fail);
        // Receive errors (ICMP-reported, ENOBUFS...) are transient for a bound socket.
        socket.on('error', () => {});
        local.setRef(false);
        resolve(local);
      });
    });
  }

  protected override drop(): void {
    // A datagram nobody takes is simply dropped.
  }

  protected override setRef(on: boolean): void {
    if (on) this.socket.ref();
    else this.socket.unref();
  }

  /**
   * Nothing more is read; replies to what was read still go out until the
   * listener is disposed at the end of the drain (on Linux its sender keeps a
   * duplicate open just as long).
   */
  protected override closeSocket(): void {
    this.socket.unref();
  }

  /** The generation is done: the socket closes. */
  dispose(): void {
    try {
      this.socket.close();
    } catch {
      // Closed already.
    }
  }
}
