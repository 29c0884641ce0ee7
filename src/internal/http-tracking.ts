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
 *
 * State lives per connection, so one server may be served by several listeners
 * and only the connections of a listener that stops are told to close.
 */
import type { IncomingMessage, Server as HttpServer, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';

export interface HttpConnectionState {
  /** Responses started and not yet finished or aborted on this connection. */
  responses: Set<ServerResponse>;
  /** performance.now() of the last request start or response end. */
  lastActive: number;
  /** True after an 'upgrade' or 'connect': no longer HTTP, closed only at the deadline. */
  detached: boolean;
  /** Its listener stopped accepting: every response from now on says `Connection: close`. */
  closing: boolean;
  /** The idle time after which drain() may close this connection. */
  idleGraceMs: number;
  /** The socket HTTP speaks on: the TLS socket for HTTPS, to end it with close_notify. */
  endpoint?: Socket;
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

/** The connection's listener stopped accepting: close it after its current response. */
export function beginClosing(socket: Socket): void {
  const state = states.get(socket);
  if (!state || state.closing) return;
  state.closing = true;
  for (const res of state.responses) closeAfter(res);
}

/**
 * The state of the connection a request arrived on. For HTTPS, `req.socket` is
 * the TLS socket wrapping the one the listener accepted (its `_parent`).
 */
function stateOf(socket: Socket): HttpConnectionState | undefined {
  const state = states.get(socket) ?? states.get((socket as unknown as { _parent?: Socket })._parent as Socket);
  if (state && !state.endpoint) state.endpoint = socket;
  return state;
}

function closeAfter(res: ServerResponse): void {
  if (!res.headersSent) res.setHeader('Connection', 'close');
}

const trackers = new WeakMap<HttpServer, HttpTracker>();
const trackingStarted = Symbol('ecdysis.http-tracking-started');

/** Watches one served HTTP server; shared by every listener serving it. */
export class HttpTracker {
  readonly #server: HttpServer;
  #users = 0;

  /** The tracker of `server`, created on first use; release() it when done. */
  static acquire(server: HttpServer): HttpTracker {
    let tracker = trackers.get(server);
    if (!tracker) {
      tracker = new HttpTracker(server);
      trackers.set(server, tracker);
    }
    tracker.#users++;
    return tracker;
  }

  private constructor(server: HttpServer) {
    this.#server = server;
    // Prepended so that we see the request before a handler that answers synchronously.
    server.prependListener('request', this.#onRequest);
    server.prependListener('upgrade', this.#onDetach);
    server.prependListener('connect', this.#onDetach);
    // A server that never listens never starts Node's request/headers timeout
    // checks; start them the way 'listening' would, without firing user handlers.
    const record = server as unknown as Record<symbol, unknown>;
    if (!server.listening && !record[trackingStarted]) {
      const setup = server.listeners('listening').find((fn) => fn.name === 'setupConnectionsTracking');
      if (setup) {
        record[trackingStarted] = true;
        setup.call(server);
      }
    }
  }

  /** A connection a listener hands to this server. */
  track(socket: Socket, closing: boolean): void {
    const keepAlive = this.#server.keepAliveTimeout;
    states.set(socket, {
      responses: new Set(),
      lastActive: performance.now(),
      detached: false,
      closing,
      idleGraceMs: keepAlive > 0 ? keepAlive : DEFAULT_IDLE_GRACE_MS,
    });
    // Node's HTTP server sets these on the sockets its own net.Server accepts.
    socket.allowHalfOpen = (this.#server as unknown as { allowHalfOpen?: boolean }).allowHalfOpen === true;
    socket.setNoDelay(true);
  }

  release(): void {
    if (--this.#users > 0) return;
    trackers.delete(this.#server);
    this.#server.off('request', this.#onRequest);
    this.#server.off('upgrade', this.#onDetach);
    this.#server.off('connect', this.#onDetach);
  }

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const state = stateOf(req.socket);
    if (!state) return; // a connection this generation did not hand out
    state.lastActive = performance.now();
    if (state.closing) closeAfter(res);
    state.responses.add(res);
    // 'close' follows 'finish' for a completed response and also covers an aborted one.
    res.once('close', () => {
      state.responses.delete(res);
      state.lastActive = performance.now();
    });
  };

  #onDetach = (req: IncomingMessage): void => {
    const state = stateOf(req.socket);
    if (state) state.detached = true;
  };
}
