/**
 * Draining the connections a generation handed out: wait for them to end,
 * close idle HTTP keep-alive connections once they have stayed idle, destroy
 * whatever is left at the deadline.
 */
import type { Socket } from 'node:net';
import type { Drainable } from './listener.ts';
import { httpState, responseInFlight, type HttpConnectionState } from './http-tracking.ts';

export interface DrainOptions {
  /** Milliseconds before the remaining connections are destroyed. Default 30000. */
  timeout?: number;
  /**
   * Milliseconds an HTTP connection must have been idle before drain() closes
   * it. Default: the serving server's `keepAliveTimeout` (5000 in Node).
   */
  idleTimeout?: number;
}

/** What drain() did. */
export interface DrainResult {
  /** Connections open when the drain began. */
  connections: number;
  /** Ended by the peer or the application (including HTTP `Connection: close`). */
  completed: number;
  /** Idle HTTP keep-alive connections drain() closed. */
  closedIdle: number;
  /** Still open at the deadline, destroyed. */
  destroyed: number;
  /** HTTP/2 sessions among the connections when the drain began. */
  sessions: number;
  /** HTTP/2 streams open in those sessions when the drain began. */
  streams: number;
  /** HTTP/2 streams still open at the deadline, cut with their connection. */
  streamsDestroyed: number;
  /** Milliseconds from the start of the drain to its end. */
  elapsedMs: number;
  /** True when the deadline was reached (or the drain was forced). */
  timedOut: boolean;
}

export interface DrainHandle {
  result: Promise<DrainResult>;
  /** End the drain now: destroy what is left. */
  force(): void;
  /** Abandon the drain and leave every connection as it is; `result` never resolves. */
  cancel(): void;
}

/**
 * The longest one turn of the event loop spends closing idle connections while
 * something else of the drain is still at work, ms: each close costs the old
 * generation tens of µs (mostly the close(2) itself and the FIN it sends), and
 * the requests it still serves must not wait for thousands of them at once.
 * When nothing is (every connection left is idle HTTP/1), a sweep closes in
 * one go, as node:http's own server.close() does: spreading the closes over
 * turns would only put node:http's work on each closed socket (its 'close'
 * handlers, about 10 µs each) between them, and end the drain that much later.
 */
const CLOSE_BUDGET_MS = 5;
/** Closes between two readings of the clock. */
const CLOSES_PER_CLOCK_READING = 16;

function isEnding(socket: Socket): boolean {
  return socket.destroyed || socket.writableEnded || socket.readableEnded;
}

/**
 * True when this connection may have work the loop must keep turning for: a
 * response in flight, an HTTP/2 session, TLS, a connection that is no longer
 * (or never was) HTTP and that the application reads itself. An idle HTTP/1
 * connection over plain TCP has none: at most a request the loop has not read yet.
 */
function mayBeBusy(connection: Drainable): boolean {
  if (!isNetSocket(connection)) return true;
  const state = idleHttp1(connection);
  if (!state) return true;
  // HTTP over plain TCP speaks on the socket itself; TLS on its endpoint, unknown until its handshake is done.
  return state.endpoint !== connection;
}

/**
 * The HTTP state of a connection that speaks HTTP/1 with no response in
 * flight; undefined for anything else (not HTTP, no longer HTTP, HTTP/2:
 * those end by themselves or at the deadline).
 */
function idleHttp1(socket: Socket): HttpConnectionState | undefined {
  const state = httpState(socket);
  return !state || state.detached || state.http2 || responseInFlight(state) ? undefined : state;
}

/** A net.Socket, as opposed to another kind of connection (a seqpacket one). */
function isNetSocket(connection: Drainable): connection is Socket {
  return 'writableEnded' in connection;
}

/** What a drain takes its connections from: a listener. */
export interface DrainSource {
  activeConnections(): Drainable[];
  onConnectionClosed: ((connection: Drainable) => void) | undefined;
}

/**
 * `othersServing`: listeners outside `sources` still serve (kept through a
 * stop): their requests need the loop to keep turning too, so closes always
 * keep to CLOSE_BUDGET_MS per turn.
 */
export function drainSockets(sources: DrainSource[], options: Required<Pick<DrainOptions, 'timeout'>> & DrainOptions, othersServing = false): DrainHandle {
  const started = performance.now();
  const http2Of = (socket: Drainable) => (isNetSocket(socket) ? httpState(socket)?.http2 : undefined);
  const open = new Set<Drainable>();
  let sessions = 0;
  let streams = 0;
  for (const source of sources) {
    for (const socket of source.activeConnections()) {
      if (socket.destroyed) continue;
      open.add(socket);
      const h2 = http2Of(socket);
      if (h2 && !h2.session.destroyed) {
        sessions++;
        streams += h2.streams.size;
      }
    }
  }
  const total = open.size;
  let completed = 0;
  let closedIdle = 0;
  let destroyed = 0;
  let streamsDestroyed = 0;
  /** TLS connections told to end (close_notify first): closed idle once they close. */
  const endedByUs = new Set<Drainable>();
  let finish!: (timedOut: boolean) => void;
  let cancel!: () => void;

  const result = new Promise<DrainResult>((resolve) => {
    let done = false;
    let sweepTimer: NodeJS.Timeout | undefined;
    /** The rest of a sweep, on the next turn (see CLOSE_BUDGET_MS). */
    let continuation: NodeJS.Immediate | undefined;
    /** Where the sweep in progress is: one walk over `open` may span several turns. */
    let cursor: Iterator<Drainable> | undefined;
    let deadlineTimer: NodeJS.Timeout | undefined;
    const stopWatching = () => {
      done = true;
      clearInterval(sweepTimer);
      clearImmediate(continuation);
      clearTimeout(deadlineTimer);
      for (const source of sources) if (source.onConnectionClosed === onClosed) source.onConnectionClosed = undefined;
    };
    finish = (timedOut: boolean) => {
      if (done) return;
      stopWatching();
      if (timedOut) {
        for (const socket of open) {
          streamsDestroyed += http2Of(socket)?.streams.size ?? 0;
          socket.destroy();
          destroyed++;
        }
        open.clear();
      }
      resolve({ connections: total, completed, closedIdle, destroyed, sessions, streams, streamsDestroyed, elapsedMs: performance.now() - started, timedOut });
    };
    cancel = () => {
      if (!done) stopWatching();
    };
    const onClosed = (socket: Drainable) => {
      // Not there: closed by the sweep (counted then), or not open when the drain began.
      if (!open.delete(socket)) return;
      if (endedByUs.delete(socket)) closedIdle++;
      else completed++;
      if (open.size === 0) finish(false);
    };
    for (const source of sources) source.onConnectionClosed = onClosed;
    if (open.size === 0) return finish(false);

    // Idle HTTP connections: close once idle for the grace the server advertised,
    // in one go or CLOSE_BUDGET_MS of closes per turn of the event loop (see there).
    /** This pass over `open` keeps to CLOSE_BUDGET_MS per turn (decided when it begins). */
    let budgeted = true;
    const anyBusy = () => {
      for (const connection of open) if (mayBeBusy(connection)) return true;
      return false;
    };
    const sweep = () => {
      continuation = undefined;
      const turnStarted = performance.now();
      if (cursor === undefined) budgeted = othersServing || anyBusy();
      const walk = (cursor ??= open.values());
      let closes = 0;
      for (let next = walk.next(); !next.done; next = walk.next()) {
        const socket = next.value;
        if (!isNetSocket(socket) || endedByUs.has(socket)) continue;
        // HTTP/2: the session went away gracefully at the stop and ends with its last stream.
        const state = idleHttp1(socket);
        if (!state) continue;
        // Ending already (a response said Connection: close, or the peer hung up):
        // it completes by itself; closing it is not ours to count.
        // Plain TCP speaks HTTP on the socket itself; TLS on its endpoint.
        const tls = state.endpoint !== undefined && state.endpoint !== socket ? state.endpoint : undefined;
        if (isEnding(socket) || (tls !== undefined && isEnding(tls))) continue;
        const grace = options.idleTimeout ?? state.idleGraceMs;
        if (turnStarted - state.lastActive < grace) continue;
        if (tls === undefined) {
          // Plain TCP: closed at once (a FIN: nothing is unread or unsent on an
          // idle connection), and done: destroy() closes the fd before it
          // returns. Not end(): the peer's FIN would make node:http end the
          // socket a second time, which builds an error with a stack for
          // nothing (about 20 µs per connection, 0.2 s for 10,000), and the
          // drain would wait for every peer.
          socket.destroy();
          open.delete(socket);
          closedIdle++;
          if (open.size === 0) return finish(false);
        } else {
          // TLS: end() sends close_notify first; closed idle once it closes.
          endedByUs.add(socket);
          tls.end();
        }
        if (budgeted && ++closes % CLOSES_PER_CLOCK_READING === 0 && performance.now() - turnStarted >= CLOSE_BUDGET_MS) {
          continuation = setImmediate(sweep);
          return;
        }
      }
      cursor = undefined;
    };
    sweep();
    if (done) return;
    sweepTimer = setInterval(() => continuation === undefined && sweep(), 100);
    deadlineTimer = setTimeout(() => finish(true), options.timeout);
  });
  return { result, force: () => finish(true), cancel: () => cancel() };
}
