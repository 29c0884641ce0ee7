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
import type { Http2Stream, ServerHttp2Session } from 'node:http2';
import type { Socket } from 'node:net';

export interface HttpConnectionState {
  /**
   * performance.now() since when the connection is known to be idle, at the
   * latest: its accept; once its listener stops accepting, the moment it did
   * (a response that ended before then ended no later), then the end of each
   * response after that (each is watched, see beginClosing()).
   */
  lastActive: number;
  /** True after an 'upgrade' or 'connect': no longer HTTP, closed only at the deadline. */
  detached: boolean;
  /** Its listener stopped accepting: every response from now on says `Connection: close`. */
  closing: boolean;
  /** The idle time after which drain() may close this connection. */
  idleGraceMs: number;
  /** The socket HTTP speaks on: the TLS socket for HTTPS (known once its handshake is done), to end it with close_notify. */
  endpoint: Socket | undefined;
  /** Its server's tracker: told when a connection begins closing, to watch requests from then on. */
  tracker: HttpTracker;
  /** HTTP/2: the session on this connection, and its streams still open. */
  http2?: { session: ServerHttp2Session; streams: Set<Http2Stream>; goingAway: boolean };
}

/**
 * The state, on the socket itself: an HTTP/2 session only shows its socket
 * through a proxy, which passes property reads through to it.
 */
const kState = Symbol('ecdysis.http-state');
type WithState = { [kState]?: HttpConnectionState; _parent?: { [kState]?: HttpConnectionState } };

export function httpState(socket: Socket): HttpConnectionState | undefined {
  return (socket as unknown as WithState)[kState];
}

/** Default idle grace when the server advertises no keep-alive timeout. */
export const DEFAULT_IDLE_GRACE_MS = 5_000;

export function isHttpServer(server: unknown): server is HttpServer {
  return typeof server === 'object' && server !== null && 'keepAliveTimeout' in server && typeof (server as HttpServer).prependListener === 'function';
}

/** node:http2's servers (plain and secure), by the method only they have. */
export function isHttp2Server(server: unknown): server is HttpServer {
  return (
    typeof server === 'object' &&
    server !== null &&
    typeof (server as { updateSettings?: unknown }).updateSettings === 'function' &&
    typeof (server as HttpServer).prependListener === 'function'
  );
}

/**
 * node:http's own record of the response a connection is writing: set on the
 * socket when a response is given the connection (before 'request' is
 * emitted), cleared when it finishes; responses pipelined behind it wait for it
 * and get the connection in turn. Reading it costs nothing per request, where
 * keeping our own set of responses cost a listener and two set operations on
 * each (4% of a keep-alive request's server CPU). Undocumented but as old as
 * node:http; the drain tests in flight would fail without it.
 */
type WithResponse = { _httpMessage?: ServerResponse | null };

function currentResponse(state: HttpConnectionState): ServerResponse | undefined {
  return (state.endpoint as WithResponse | undefined)?._httpMessage ?? undefined;
}

/** True while this HTTP/1.x connection has a response in flight (pipelined ones wait behind it). */
export function responseInFlight(state: HttpConnectionState): boolean {
  return currentResponse(state) !== undefined;
}

/**
 * The connection's listener stopped accepting: close it after its current
 * response (HTTP/2: GOAWAY). Only from now on are requests seen, and responses
 * watched to the end for the time the connection becomes idle: until then
 * serve() adds no work per request at all. A connection already idle counts
 * as idle from now on, which is never earlier than it really became idle (so
 * drain() never closes it sooner than the client's keep-alive allows), and
 * Node's own keep-alive timer still ends it when it would have. `now`:
 * performance.now(), read once for all the listener's connections.
 */
export function beginClosing(socket: Socket, now: number): void {
  const state = httpState(socket);
  if (!state || state.closing) return;
  state.closing = true;
  state.tracker.watchRequests();
  const res = currentResponse(state);
  if (res !== undefined) watch(state, res);
  // Idle since some time before now (a connection that never sent a byte keeps its accept time).
  else if (socket.bytesRead > 0) state.lastActive = now;
  if (state.http2) goAway(state.http2);
}

/** NGHTTP2_NO_ERROR; the largest stream id (a GOAWAY with it only announces the shutdown). */
const NO_ERROR = 0;
const MAX_STREAM_ID = 2 ** 31 - 1;

/**
 * HTTP/2's graceful shutdown, in two steps so that streams on the wire are not
 * refused: a GOAWAY that names the largest stream id (no new streams, please)
 * and a PING; the client answers the PING after it has read the GOAWAY, so
 * every stream it sent before then has arrived, and close() sends the final
 * GOAWAY (the last stream this side took), lets those streams finish and ends
 * the session.
 *
 * But once a GOAWAY is sent, nghttp2 stops reading the connection whenever no
 * stream is open: the PING's answer, and any stream still on its way, would
 * never be read, and the session would hang until the drain deadline (seen
 * under load). So a session with no stream open closes at once, before or
 * after the PING: an idle one right away; a busy one when its last stream
 * ends, if the answer has not come by then. Streams still on the wire at that
 * moment, and streams a client had queued but not yet written, are refused
 * with the final GOAWAY (REFUSED_STREAM): never processed, so RFC 9113 §8.7
 * lets the client send them again.
 */
function goAway(h2: NonNullable<HttpConnectionState['http2']>): void {
  if (h2.goingAway) return;
  h2.goingAway = true;
  const { session } = h2;
  if (session.closed || session.destroyed) return;
  const close = () => {
    session.off('stream', onStream);
    if (!session.closed && !session.destroyed) session.close();
  };
  // Registered after the tracking's own: the set is up to date when these run.
  const whenIdle = () => {
    if (h2.streams.size === 0) close();
  };
  const onStream = (stream: Http2Stream) => stream.once('close', whenIdle);
  try {
    session.goaway(NO_ERROR, MAX_STREAM_ID);
    if (h2.streams.size === 0 || !session.ping(close)) return close();
  } catch {
    return close();
  }
  session.on('stream', onStream);
  for (const stream of h2.streams) stream.once('close', whenIdle);
}

/**
 * The state of the connection a request arrived on. For HTTPS, `req.socket` is
 * the TLS socket wrapping the one the listener accepted (its `_parent`).
 */
function stateOf(socket: Socket): HttpConnectionState | undefined {
  const proxied = socket as unknown as WithState;
  const state = proxied[kState] ?? proxied._parent?.[kState];
  if (state && !state.endpoint) state.endpoint = socket;
  return state;
}

type ResponseWithState = ServerResponse & { [kState]?: HttpConnectionState };

/** A response on a closing connection: `Connection: close` if it can still say so, and its end stamped. */
function watch(state: HttpConnectionState, res: ServerResponse): void {
  const watched = res as ResponseWithState;
  if (watched[kState]) return;
  closeAfter(res);
  watched[kState] = state;
  // 'close' follows 'finish' for a completed response and also covers an aborted one.
  res.on('close', onResponseClose);
}

/** One function for every watched response: nothing allocated per request. */
function onResponseClose(this: ResponseWithState): void {
  const state = this[kState];
  if (!state) return;
  state.lastActive = performance.now();
  // A response pipelined behind this one (its request came before the stop) has the connection now.
  const next = currentResponse(state);
  if (next !== undefined && next !== this) watch(state, next);
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
  /** HTTP/1.x requests reach a 'request' listener (not on an HTTP/2 server that answers streams itself). */
  #hasRequests = true;
  #watchingRequests = false;
  /** HTTPS (and HTTP/2 over TLS): HTTP speaks on the TLS socket, known at the end of its handshake. */
  readonly #secure: boolean;

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
    this.#secure = typeof (server as unknown as { addContext?: unknown }).addContext === 'function';
    if (this.#secure) server.prependListener('secureConnection', this.#onSecure);
    if (isHttp2Server(server)) {
      server.prependListener('session', this.#onSession);
      // A 'request' listener turns on node:http2's compatibility API for every
      // stream: on a server that answers streams itself (gRPC) both would
      // answer. Only a server that has one already (HTTP/1.1 with allowHTTP1
      // comes that way) gets ours.
      if (server.listenerCount('request') === 0) {
        this.#hasRequests = false;
        return;
      }
    }
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
    const state: HttpConnectionState = {
      lastActive: performance.now(),
      detached: false,
      closing,
      idleGraceMs: keepAlive > 0 ? keepAlive : DEFAULT_IDLE_GRACE_MS,
      endpoint: this.#secure ? undefined : socket,
      tracker: this,
    };
    if (closing) this.watchRequests();
    (socket as unknown as WithState)[kState] = state;
    // Node's HTTP server sets these on the sockets its own net.Server accepts.
    socket.allowHalfOpen = (this.#server as unknown as { allowHalfOpen?: boolean }).allowHalfOpen === true;
    socket.setNoDelay(true);
  }

  /**
   * A connection of this server begins closing: from now on every request is
   * seen, to say `Connection: close` and watch its response (see beginClosing()).
   */
  watchRequests(): void {
    if (this.#watchingRequests || !this.#hasRequests || this.#users === 0) return;
    this.#watchingRequests = true;
    // Prepended so that we see the request before a handler that answers synchronously.
    this.#server.prependListener('request', this.#onRequest);
  }

  release(): void {
    if (--this.#users > 0) return;
    trackers.delete(this.#server);
    this.#watchingRequests = false;
    this.#server.off('secureConnection', this.#onSecure);
    this.#server.off('request', this.#onRequest);
    this.#server.off('upgrade', this.#onDetach);
    this.#server.off('connect', this.#onDetach);
    this.#server.off('session', this.#onSession);
  }

  /** An HTTP/2 session on a connection a listener handed out: its streams are what drains. */
  #onSession = (session: ServerHttp2Session): void => {
    const state = stateOf(session.socket as Socket);
    if (!state) return;
    const h2 = { session, streams: new Set<Http2Stream>(), goingAway: false };
    state.http2 = h2;
    session.on('stream', (stream: Http2Stream) => {
      h2.streams.add(stream);
      stream.once('close', () => h2.streams.delete(stream));
    });
    // The connection was accepted before this generation stopped, its session
    // came after: it takes what the client sends first, then goes away.
    if (state.closing) goAway(h2);
  };

  #onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    // HTTP/2 requests (the compatibility API) drain by their session.
    if (req.httpVersionMajor === 2) return;
    const state = stateOf(req.socket);
    if (!state) return; // a connection this generation did not hand out
    if (state.closing) watch(state, res);
  };

  /** The TLS socket over a connection a listener handed out: where HTTP speaks. */
  #onSecure = (tlsSocket: Socket): void => {
    stateOf(tlsSocket);
  };

  #onDetach = (req: IncomingMessage): void => {
    const state = stateOf(req.socket);
    if (state) state.detached = true;
  };
}
