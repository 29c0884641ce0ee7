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
import type { Observable } from 'rxjs';
import { HttpTracker, beginClosing, isHttp2Server, isHttpServer } from './http-tracking.ts';
import { invalidOption } from '../errors.ts';
import { cluster } from '../internal/builtins.ts';
import { BaseListener, type ListenerConfig } from './base-listener.ts';
import { guardListen } from '../internal/guardrails.ts';
import type { IterateOptions } from './feed.ts';
import type { LocalStreamSocket } from './local-socket.ts';

const debug = debuglog('ecdysis');

/** Connections accepted ahead for an iterator that is busy; beyond that, accepting pauses. */
const MAX_PENDING = 8;

/** Anything that takes connections the way net.Server hands them to its listeners. */
export interface ConnectionSink {
  emit(event: 'connection', socket: Socket): boolean;
}

/** A @grpc/grpc-js Server, as far as serveGrpc() needs it (no dependency on the package). */
export interface GrpcServerLike {
  createConnectionInjector(credentials: never): unknown;
}

interface GrpcConnectionInjector {
  injectConnection(connection: Socket): void;
  drain(graceTimeMs: number): void;
  destroy(): void;
}

/** The injector's own drain cuts what it could not end gracefully after this: ours does, at the drain deadline. */
const GRPC_INJECTOR_GRACE_MS = 2 ** 31 - 1;

/** Options every stream listener shares. */
export interface StreamListenerConfig extends ListenerConfig {
  backlog: number;
  allowHalfOpen: boolean;
  /** Local mode: the listening socket Node created (`fd` is then undefined). */
  local?: LocalStreamSocket | undefined;
}

export abstract class StreamListener extends BaseListener<Socket> implements AsyncIterable<Socket> {
  readonly #backlog: number;
  readonly #allowHalfOpen: boolean;
  readonly #local: LocalStreamSocket | undefined;
  #server: Server | undefined;
  readonly #active = new Set<Socket>();
  /** What else to tell when this listener stops accepting (a gRPC injector's drain). */
  readonly #onStop = new Set<() => void>();

  protected constructor(config: StreamListenerConfig) {
    super(config, MAX_PENDING);
    this.#backlog = config.backlog;
    this.#allowHalfOpen = config.allowHalfOpen;
    this.#local = config.local;
    // Node's first Server#listen() loads node:cluster (3 to 4 ms). A listener
    // starts serving at the commit, when a new generation's connections queue
    // until it does: load it now, during the start.
    cluster();
  }

  /** Connections accepted by this generation that have not closed yet. */
  override get connectionCount(): number {
    return this.#active.size;
  }

  /**
   * The accepted connections as a cold Observable: subscribing starts accepting
   * (once the generation is ready), unsubscribing stops. It completes when this
   * generation is done serving. With several consumers, each connection goes to
   * exactly one of them.
   *
   * @example
   * web.connections().pipe(mergeMap((socket) => proxy(socket))).subscribe();
   */
  connections(): Observable<Socket> {
    return this.feed.observable();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Socket> {
    return this.iterate();
  }

  /**
   * The accepted connections as an async iterator that ends when this generation
   * is done serving; `break` (or `return()`) releases it.
   *
   * @example
   * for await (const socket of web.iterate({ signal })) handle(socket);
   */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<Socket> {
    return this.feed.iterate(options);
  }

  /**
   * Hand every connection this generation accepts to `server` (a node:http,
   * https or http2 server, or anything that takes net.Server's 'connection'
   * event). For an HTTP server, shutdown is HTTP-aware: responses say
   * `Connection: close` once this generation stops accepting, and drain() closes
   * idle keep-alive connections without racing the client; HTTP/2 sessions get
   * GOAWAY, their streams in flight finish and no new one starts. Returns a
   * function that detaches it.
   *
   * @example
   * web.serve(http.createServer(app));
   */
  serve(server: ConnectionSink): () => void {
    const tracker = isHttpServer(server) || isHttp2Server(server) ? HttpTracker.acquire(server) : undefined;
    // server.listen() from now on is a coded error, not a second socket.
    const liftGuard = guardListen(server);
    // The feed itself, not connections(): no rxjs on the way of every connection.
    const unsubscribe = this.feed.subscribe({
      next: (socket) => {
        tracker?.track(socket, this.shuttingDown);
        server.emit('connection', socket);
      },
      // A listener that cannot accept at all: tell the server the way net.Server would.
      error: (err: unknown) => {
        const emitter = server as unknown as Partial<EventEmitter>;
        if (typeof emitter.listenerCount === 'function' && emitter.listenerCount('error') > 0) emitter.emit!('error', err);
      },
      complete: () => {},
    });
    let detached = false;
    return () => {
      if (detached) return;
      detached = true;
      unsubscribe();
      tracker?.release();
      liftGuard();
    };
  }

  /**
   * Serve a `@grpc/grpc-js` Server (1.10 or later: `createConnectionInjector`,
   * gRFC L114) on this listener: its calls run as if it listened itself, and
   * when this generation stops accepting, its HTTP/2 sessions go away the way
   * serve() ends an HTTP/2 server's (GOAWAY, a PING, then the final GOAWAY:
   * calls in flight finish, new ones go to the new generation); what still runs
   * at the drain deadline is cut. Do not bind (`bindAsync`) the server.
   * `credentials` are its ServerCredentials. Returns a function that detaches it.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION for a server without createConnectionInjector.
   * @example
   * web.serveGrpc(grpcServer, grpc.ServerCredentials.createInsecure());
   */
  serveGrpc(server: GrpcServerLike, credentials: unknown): () => void {
    const grpc = server as unknown as { createConnectionInjector?: (credentials: unknown) => GrpcConnectionInjector; http2Servers?: unknown };
    if (typeof grpc !== 'object' || grpc === null || typeof grpc.createConnectionInjector !== 'function') {
      throw invalidOption('server', 'must be a @grpc/grpc-js Server with createConnectionInjector (1.10 or later)', server);
    }
    // grpc-js makes one node:http2 server per injector (kept in its http2Servers
    // map): served directly, its sessions drain as serve() drains HTTP/2. The
    // injector's own drain (one final GOAWAY at once) would refuse the streams
    // a client has on the wire; it is the fallback for a grpc-js that hides it.
    const servers = () => (grpc.http2Servers instanceof Map ? [...(grpc.http2Servers as Map<unknown, unknown>).keys()] : []);
    const before = new Set(servers());
    const injector = grpc.createConnectionInjector.call(server, credentials);
    const created = servers().filter((candidate) => !before.has(candidate));
    const http2Server = created.length === 1 && isHttp2Server(created[0]) ? created[0] : undefined;
    const detach = http2Server ? this.serve(http2Server as unknown as ConnectionSink) : this.#serveThroughInjector(injector);
    let detached = false;
    return () => {
      if (detached) return;
      detached = true;
      detach();
      injector.destroy();
    };
  }

  /** A grpc-js whose HTTP/2 server cannot be reached: its connection injector, and its own drain at the stop. */
  #serveThroughInjector(injector: GrpcConnectionInjector): () => void {
    const stop = () => injector.drain(GRPC_INJECTOR_GRACE_MS);
    this.#onStop.add(stop);
    const detach = this.serve({ emit: (_event: 'connection', socket: Socket) => (injector.injectConnection(socket), true) });
    return () => {
      this.#onStop.delete(stop);
      detach();
    };
  }

  /** @internal Connections handed out (or queued) and still open. */
  override activeConnections(): Socket[] {
    return [...this.#active];
  }

  protected override onShuttingDown(): void {
    const now = performance.now();
    for (const socket of this.#active) beginClosing(socket, now);
    for (const stop of this.#onStop) stop();
  }

  protected override discardItem(socket: Socket): void {
    socket.destroy();
  }

  protected override startServing(fd: number | undefined): void {
    if (fd === undefined) {
      const local = this.#local!;
      return local.attachServer(this.#onConnection, (err) => this.#onServerError(local.server, err));
    }
    const server = new Server({ allowHalfOpen: this.#allowHalfOpen });
    server.on('connection', this.#onConnection);
    server.on('error', (err: NodeJS.ErrnoException) => this.#onServerError(server, err));
    this.#server = server;
    server.listen({ fd, backlog: this.#backlog });
  }

  protected override stopServing(): void {
    const server = this.#server;
    this.#server = undefined;
    // Closes only this listener's duplicate; the registry's fd keeps the socket open.
    server?.close();
    // Local mode: the socket stays open (and holds what arrives) until the registry closes it.
    this.#local?.detach();
  }

  #onConnection = (socket: Socket): void => {
    this.#active.add(socket);
    // One function for every socket ('close' comes once): nothing allocated per connection.
    socket.on('close', this.#forget);
    this.feed.push(socket);
  };

  readonly #forget = ((listener: StreamListener) =>
    function forget(this: Socket): void {
      listener.#active.delete(this);
      listener.onConnectionClosed?.(this);
    })(this);

  #onServerError(server: Server, err: NodeJS.ErrnoException): void {
    // Accept errors (EMFILE, ENFILE, ECONNABORTED...) are transient: libuv keeps
    // listening. Anything else means this listener cannot accept at all.
    if (err.syscall === 'accept') {
      debug('listener %s: %s', this.key, err.message);
      return;
    }
    if (server !== this.#server && server !== this.#local?.server) return;
    this.fail(err);
  }
}
