/**
 * A listening stream socket (TCP or Unix) owned by the registry, seen as an
 * async iterable and an rxjs Observable of accepted connections.
 *
 * Accepting starts when the generation is ready and at least one consumer
 * (iterator, subscriber, served server) is attached; it stops when the last
 * consumer leaves and for good when the generation stops accepting. While it is
 * not accepting, the kernel keeps queueing connections: nothing is refused.
 */
import type { EventEmitter } from 'node:events';
import { Server, type Socket } from 'node:net';
import { debuglog } from 'node:util';
import { Observable, type Subscriber } from 'rxjs';
import { HttpTracker, isHttpServer } from '../internal/http-tracking.ts';
import { native } from '../internal/native.ts';

const debug = debuglog('ecdysis');

/** Anything that takes connections the way net.Server hands them to its listeners. */
export interface ConnectionSink {
  emit(event: 'connection', socket: Socket): boolean;
}

export interface IterateOptions {
  /** Ends the iteration: a pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
}

interface Waiter {
  owner: object;
  resolve: (result: IteratorResult<Socket>) => void;
  reject: (err: unknown) => void;
}

/** Options every stream listener shares. */
export interface StreamListenerConfig {
  key: string;
  /** The registry's fd; the listener only ever gives Node duplicates of it. */
  fd: number;
  backlog: number;
  inherited: boolean;
  stopOnShutdown: boolean;
  allowHalfOpen: boolean;
}

export abstract class StreamListener implements AsyncIterable<Socket> {
  /** The key under which the socket is handed to the next generation. */
  readonly key: string;
  /** False when this listener keeps accepting through a stop (never through an upgrade). */
  readonly stopOnShutdown: boolean;
  /** True when the socket came from the previous generation. */
  readonly inherited: boolean;
  /** Resolves when this generation has stopped accepting on this listener. */
  readonly closed: Promise<void>;

  readonly #fd: number;
  readonly #backlog: number;
  readonly #allowHalfOpen: boolean;
  #server: Server | undefined;
  #started = false;
  #stopped = false;
  #shuttingDown = false;
  #iterators = 0;
  #roundRobin = 0;
  #error: Error | undefined;
  readonly #observers = new Set<Subscriber<Socket>>();
  readonly #waiters: Waiter[] = [];
  readonly #pending: Socket[] = [];
  readonly #active = new Set<Socket>();
  readonly #trackers = new Set<HttpTracker>();
  #resolveClosed!: () => void;

  protected constructor(config: StreamListenerConfig) {
    this.key = config.key;
    this.#fd = config.fd;
    this.#backlog = config.backlog;
    this.inherited = config.inherited;
    this.stopOnShutdown = config.stopOnShutdown;
    this.#allowHalfOpen = config.allowHalfOpen;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  /** True while this generation is accepting connections on this listener. */
  get accepting(): boolean {
    return this.#server !== undefined;
  }

  /** Connections accepted by this generation that have not closed yet. */
  get connectionCount(): number {
    return this.#active.size;
  }

  /**
   * The accepted connections as a cold Observable: subscribing starts accepting
   * (once the generation is ready), unsubscribing stops. It completes when this
   * generation stops accepting. With several consumers, each connection goes to
   * exactly one of them.
   *
   * @example
   * web.connections().pipe(mergeMap((socket) => proxy(socket))).subscribe();
   */
  connections(): Observable<Socket> {
    return new Observable<Socket>((subscriber) => {
      if (this.#error) return subscriber.error(this.#error);
      if (this.#stopped && this.#pending.length === 0) return subscriber.complete();
      while (this.#pending.length > 0 && !subscriber.closed) subscriber.next(this.#pending.shift()!);
      if (this.#stopped) return subscriber.complete();
      this.#observers.add(subscriber);
      this.#sync();
      return () => {
        this.#observers.delete(subscriber);
        this.#sync();
      };
    });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Socket> {
    return this.iterate();
  }

  /**
   * The accepted connections as an async iterator that ends when this generation
   * stops accepting; `break` (or `return()`) releases it.
   *
   * @example
   * for await (const socket of web.iterate({ signal })) handle(socket);
   */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<Socket> {
    const owner = {};
    const { signal } = options;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      this.#iterators--;
      signal?.removeEventListener('abort', onAbort);
      for (let i = this.#waiters.length - 1; i >= 0; i--) {
        const waiter = this.#waiters[i]!;
        if (waiter.owner !== owner) continue;
        this.#waiters.splice(i, 1);
        if (signal?.aborted) waiter.reject(signal.reason);
        else waiter.resolve({ value: undefined, done: true });
      }
      this.#sync();
    };
    const onAbort = () => finish();
    this.#iterators++;
    if (signal?.aborted) finish();
    else signal?.addEventListener('abort', onAbort, { once: true });
    this.#sync();

    const iterator: AsyncIterableIterator<Socket> = {
      next: () => {
        if (finished) {
          return signal?.aborted ? Promise.reject(signal.reason) : Promise.resolve({ value: undefined, done: true });
        }
        const socket = this.#pending.shift();
        if (socket) return Promise.resolve({ value: socket, done: false });
        if (this.#error) {
          const error = this.#error;
          finish();
          return Promise.reject(error);
        }
        if (this.#stopped) {
          finish();
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => this.#waiters.push({ owner, resolve, reject }));
      },
      return: () => {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /**
   * Hand every connection this generation accepts to `server` (a node:http or
   * https server, or anything that takes net.Server's 'connection' event). For an
   * HTTP server, shutdown is HTTP-aware: responses say `Connection: close` once
   * this generation stops accepting, and drain() closes idle keep-alive
   * connections without racing the client. Returns a function that detaches it.
   *
   * @example
   * web.serve(http.createServer(app));
   */
  serve(server: ConnectionSink): () => void {
    const tracker = isHttpServer(server) ? new HttpTracker(server) : undefined;
    if (tracker) {
      this.#trackers.add(tracker);
      if (this.#shuttingDown) tracker.beginShutdown();
    }
    const halfOpen = isHttpServer(server) && (server as unknown as { allowHalfOpen?: boolean }).allowHalfOpen === true;
    const subscription = this.connections().subscribe({
      next: (socket) => {
        if (tracker) {
          tracker.track(socket);
          socket.allowHalfOpen = halfOpen;
          socket.setNoDelay(true);
        }
        server.emit('connection', socket);
      },
      // A listener that cannot accept at all: tell the server the way net.Server would.
      error: (err: unknown) => {
        const emitter = server as unknown as Partial<EventEmitter>;
        if (typeof emitter.listenerCount === 'function' && emitter.listenerCount('error') > 0) emitter.emit!('error', err);
      },
    });
    return () => {
      subscription.unsubscribe();
      if (tracker) {
        tracker.dispose();
        this.#trackers.delete(tracker);
      }
    };
  }

  /** @internal The generation is ready: accept once someone listens. */
  start(): void {
    this.#started = true;
    this.#sync();
  }

  /**
   * @internal Shutdown has begun but this listener still accepts what the kernel
   * already queued: served HTTP servers start answering `Connection: close`.
   */
  prepareStop(): void {
    this.#shuttingDown = true;
    for (const tracker of this.#trackers) tracker.beginShutdown();
  }

  /** @internal This generation stops accepting on this listener, for good. */
  stop(): void {
    if (this.#stopped) return;
    this.prepareStop();
    this.#stopped = true;
    this.#sync();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
    for (const observer of [...this.#observers]) observer.complete();
    this.#observers.clear();
    if (this.#iterators === 0) {
      // Accepted, but nobody is left to take them: they count as destroyed in drain().
      for (const socket of this.#pending.splice(0)) socket.destroy();
    }
    this.#resolveClosed();
  }

  /** @internal Connections handed out (or queued) and still open. */
  activeSockets(): Socket[] {
    return [...this.#active];
  }

  /** @internal */
  get stopped(): boolean {
    return this.#stopped;
  }

  #sync(): void {
    const wanted = this.#started && !this.#stopped && !this.#error && (this.#observers.size > 0 || this.#iterators > 0);
    if (wanted && !this.#server) {
      const server = new Server({ allowHalfOpen: this.#allowHalfOpen });
      server.on('connection', this.#onConnection);
      server.on('error', (err: NodeJS.ErrnoException) => this.#onServerError(server, err));
      let fd: number;
      try {
        fd = native().dupCloexec(this.#fd);
      } catch (err) {
        this.#fail(err as Error);
        return;
      }
      this.#server = server;
      server.listen({ fd, backlog: this.#backlog });
    } else if (!wanted && this.#server) {
      const server = this.#server;
      this.#server = undefined;
      // Closes only this listener's duplicate; the registry's fd keeps the socket open.
      server.close();
    }
  }

  #onConnection = (socket: Socket): void => {
    this.#active.add(socket);
    socket.once('close', () => this.#active.delete(socket));
    // Round robin over the subscribers plus, as one more slot, the iterators
    // waiting in next(); with nobody able to take it now, queue it for an iterator.
    const slots = this.#observers.size + (this.#waiters.length > 0 ? 1 : 0);
    if (slots === 0) return void this.#pending.push(socket);
    const pick = this.#roundRobin++ % slots;
    if (pick === this.#observers.size) return this.#waiters.shift()!.resolve({ value: socket, done: false });
    [...this.#observers][pick]!.next(socket);
  };

  #onServerError(server: Server, err: NodeJS.ErrnoException): void {
    // Accept errors (EMFILE, ENFILE, ECONNABORTED...) are transient: libuv keeps
    // listening. Anything else means this listener cannot accept at all.
    if (err.syscall === 'accept') {
      debug('listener %s: %s', this.key, err.message);
      return;
    }
    if (server !== this.#server) return;
    this.#fail(err);
  }

  #fail(err: Error): void {
    debug('listener %s failed: %s', this.key, err.message);
    this.#error = err;
    const server = this.#server;
    this.#server = undefined;
    server?.close();
    for (const waiter of this.#waiters.splice(0)) waiter.reject(err);
    for (const observer of [...this.#observers]) observer.error(err);
    this.#observers.clear();
  }
}
