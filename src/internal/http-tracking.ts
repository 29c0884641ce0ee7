/**
 * What drain() needs to know about HTTP connections handed to a served
 * node:http/https server: which requests are in flight, since when a connection
 * has been idle, and which connections left HTTP (WebSocket upgrade, CONNECT).
 *
 * Zero client-visible errors on keep-alive connections needs three things:
 * once shutdown begins every response carries `Connection: close`; a connection
 * idle since then is closed only after it has stayed idle for the keep-alive
 * timeout the server advertised (Node's Agent drops an idle socket one second
 * before that hint expires, so it never races our close); the deadline comes last.
 */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface HttpConnectionState {
  inflight: number;
  /** performance.now() of the last request start or response end. */
  lastActive: number;
  /** True after an 'upgrade' or 'connect': no longer HTTP, closed only at the deadline. */
  detached: boolean;
  /** The idle time after which drain() may close this connection. */
  idleGraceMs: number;
}

const states = new WeakMap<Socket, HttpConnectionState>();

export function httpState(socket: Socket): HttpConnectionState | undefined {
  return states.get(socket);
}

/** Default idle grace when the server advertises no keep-alive timeout. */
export const DEFAULT_IDLE_GRACE_MS = 5_000;

export function isHttpServer(server: unknown): server is HttpServer {
  return typeof server === 'object' && server !== null && 'keepAliveTimeout' in server && typeof (server as HttpServer).prependListener === 'function';
}

/** Tracks one served HTTP server. */
export class HttpTracker {
  readonly #server: HttpServer;
  readonly #responses = new Set<ServerResponse>();
  #closing = false;

  constructor(server: HttpServer) {
    this.#server = server;
    // Prepended so that we see the request before a handler that answers synchronously.
    server.prependListener('request', this.#onRequest);
    server.prependListener('upgrade', this.#onDetach);
    server.prependListener('connect', this.#onDetach);
    // A server that never listens never starts Node's request/headers timeout
    // checks; start them the way 'listening' would, without firing user handlers.
    if (!server.listening) {
      const setup = server.listeners('listening').find((fn) => fn.name === 'setupConnectionsTracking');
      if (setup && !(server as unknown as Record<symbol, unknown>)[trackingStarted]) {
        (server as unknown as Record<symbol, unknown>)[trackingStarted] = true;
        setup.call(server);
      }
    }
  }

  /** A connection the listener hands to this server. */
  track(socket: Socket): void {
    const keepAlive = this.#server.keepAliveTimeout;
    states.set(socket, {
      inflight: 0,
      lastActive: performance.now(),
      detached: false,
      idleGraceMs: keepAlive > 0 ? keepAlive : DEFAULT_IDLE_GRACE_MS,
    });
  }

  /** Shutdown began: every response not yet started will say `Connection: close`. */
  beginShutdown(): void {
    this.#closing = true;
    for (const res of this.#responses) closeAfter(res);
  }

  dispose(): void {
    this.#server.off('request', this.#onRequest);
    this.#server.off('upgrade', this.#onDetach);
    this.#server.off('connect', this.#onDetach);
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const state = states.get(req.socket);
    if (!state) return; // a connection this generation did not hand out
    state.inflight++;
    state.lastActive = performance.now();
    if (this.#closing) closeAfter(res);
    this.#responses.add(res);
    let finished = false;
    const done = () => {
      if (finished) return;
      finished = true;
      this.#responses.delete(res);
      state.inflight--;
      state.lastActive = performance.now();
    };
    res.once('finish', done);
    res.once('close', done);
  };

  #onDetach = (req: IncomingMessage): void => {
    const state = states.get(req.socket);
    if (state) state.detached = true;
  };
}

const trackingStarted = Symbol('ecdysis.http-tracking-started');

function closeAfter(res: ServerResponse): void {
  if (!res.headersSent) res.setHeader('Connection', 'close');
}
