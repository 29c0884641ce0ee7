/**
 * A listening stream socket (TCP or Unix) owned by the registry, seen as an
 * async iterable and an rxjs Observable of accepted connections.
 *
 * Accepting starts when the generation is ready and at least one consumer
 * (iterator, subscriber, served server) is attached; it stops when the last
 * consumer leaves. After an upgrade commits, the listener pauses: consumers stay
 * attached (nothing completes) because the old generation takes the service
 * back if its successor dies while it is still alive; it stops for good, and
 * its iterators and Observables complete, when the generation is done serving.
 * While it is not accepting, the kernel keeps queueing connections: nothing is
 * refused.
 */
import type { EventEmitter } from 'node:events';
import { Server, type Socket } from 'node:net';
import { debuglog } from 'node:util';
// The Observable class alone: the 'rxjs' entry point loads all of rxjs (about 50 ms
// and 6 MB per process start, i.e. per upgrade). Same module, same class.
import { Observable } from 'rxjs/internal/Observable';
import type { Subscriber } from 'rxjs';
import { HttpTracker, beginClosing, isHttpServer } from '../internal/http-tracking.ts';
import { native } from '../internal/native.ts';
import type { SocketKind } from '../kinds/kind.ts';
import type { Listener } from './listener.ts';

const debug = debuglog('ecdysis');

/** Connections accepted ahead for an iterator that is busy; beyond that, accepting pauses. */
const MAX_PENDING = 8;

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

export abstract class StreamListener implements AsyncIterable<Socket>, Listener {
  abstract readonly kind: SocketKind;
  /** The key under which the socket is handed to the next generation. */
  readonly key: string;
  /** False when this listener keeps accepting through a stop (never through an upgrade). */
  readonly stopOnShutdown: boolean;
  /** True when the socket came from the previous generation. */
  readonly inherited: boolean;
  /**
   * Resolves when this generation has stopped accepting on this listener for
   * good (a stop, or the end of the generation after an upgrade).
   */
  readonly closed: Promise<void>;

  readonly #fd: number;
  readonly #backlog: number;
  readonly #allowHalfOpen: boolean;
  #server: Server | undefined;
  #started = false;
  #paused = false;
  #stopped = false;
  #shuttingDown = false;
  #discarded = 0;
  #retryTimer: NodeJS.Timeout | undefined;
  #iterators = 0;
  #roundRobin = 0;
  #error: Error | undefined;
  /** An array, not a Set: the accept path indexes it for round robin. */
  readonly #observers: Subscriber<Socket>[] = [];
  readonly #waiters: Waiter[] = [];
  readonly #pending: Socket[] = [];
  readonly #active = new Set<Socket>();
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
      while (this.#pending.length > 0 && !subscriber.closed) subscriber.next(this.#pending.shift()!);
      if (this.#stopped) return subscriber.complete();
      this.#observers.push(subscriber);
      this.#sync();
      return () => {
        const index = this.#observers.indexOf(subscriber);
        if (index !== -1) this.#observers.splice(index, 1);
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
      if (this.#stopped) this.#discardPending();
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
        if (socket) {
          this.#sync(); // room in the queue again: resume accepting if it was paused
          return Promise.resolve({ value: socket, done: false });
        }
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
    const tracker = isHttpServer(server) ? HttpTracker.acquire(server) : undefined;
    const subscription = this.connections().subscribe({
      next: (socket) => {
        tracker?.track(socket, this.#shuttingDown);
        server.emit('connection', socket);
      },
      // A listener that cannot accept at all: tell the server the way net.Server would.
      error: (err: unknown) => {
        const emitter = server as unknown as Partial<EventEmitter>;
        if (typeof emitter.listenerCount === 'function' && emitter.listenerCount('error') > 0) emitter.emit!('error', err);
      },
    });
    let detached = false;
    return () => {
      if (detached) return;
      detached = true;
      subscription.unsubscribe();
      tracker?.release();
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
    for (const socket of this.#active) beginClosing(socket);
  }

  /**
   * @internal The upgrade committed: stop accepting, keep the consumers (the
   * service may come back here). HTTP connections close after their response.
   */
  pause(): void {
    if (this.#stopped || this.#paused) return;
    this.prepareStop();
    this.#paused = true;
    this.#sync();
  }

  /** @internal The successor died: accept again; new HTTP connections are kept alive as usual. */
  resume(): void {
    if (this.#stopped || !this.#paused) return;
    this.#paused = false;
    this.#shuttingDown = false;
    this.#sync();
  }

  /** @internal This generation stops accepting on this listener, for good. */
  stop(): void {
    if (this.#stopped) return;
    this.prepareStop();
    this.#stopped = true;
    this.#sync();
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
    for (const observer of this.#observers.splice(0)) observer.complete();
    this.#discardPending();
    this.#resolveClosed();
  }

  /** @internal Connections accepted but destroyed because no consumer was left to take them. */
  get discarded(): number {
    return this.#discarded;
  }

  /** Once stopped, queued connections no iterator will ever take are destroyed (and counted). */
  #discardPending(): void {
    if (this.#iterators > 0 || this.#pending.length === 0) return;
    for (const socket of this.#pending.splice(0)) {
      this.#discarded++;
      socket.destroy();
    }
  }

  /** @internal Connections handed out (or queued) and still open. */
  activeConnections(): Socket[] {
    return [...this.#active];
  }

  /** @internal */
  get stopped(): boolean {
    return this.#stopped;
  }

  #sync(): void {
    // Accept on demand: for subscribers, for iterators waiting in next(), and a few
    // ahead for busy iterators. Otherwise connections wait in the kernel's queue,
    // where nothing is lost if this generation goes away.
    const demand =
      this.#observers.length > 0 || this.#waiters.length > 0 || (this.#iterators > 0 && this.#pending.length < MAX_PENDING);
    const wanted = this.#started && !this.#paused && !this.#stopped && !this.#error && demand;
    if (wanted && !this.#server) {
      if (this.#retryTimer) return;
      let fd: number;
      try {
        fd = native().dupCloexec(this.#fd);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EMFILE' && code !== 'ENFILE') return this.#fail(err as Error);
        // Out of fds for a moment: try again soon rather than give up on the listener.
        debug('listener %s: %s, retrying', this.key, (err as Error).message);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          this.#sync();
        }, 100);
        return;
      }
      const server = new Server({ allowHalfOpen: this.#allowHalfOpen });
      server.on('connection', this.#onConnection);
      server.on('error', (err: NodeJS.ErrnoException) => this.#onServerError(server, err));
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
    const slots = this.#observers.length + (this.#waiters.length > 0 ? 1 : 0);
    if (slots === 0) {
      this.#pending.push(socket);
      return this.#sync();
    }
    const pick = this.#roundRobin++ % slots;
    if (pick === this.#observers.length) return this.#waiters.shift()!.resolve({ value: socket, done: false });
    this.#observers[pick]!.next(socket);
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
    for (const observer of this.#observers.splice(0)) observer.error(err);
  }
}
