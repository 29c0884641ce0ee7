/**
 * Draining the connections a generation handed out: wait for them to end,
 * close idle HTTP keep-alive connections once they have stayed idle, destroy
 * whatever is left at the deadline.
 */
import type { Socket } from 'node:net';
import type { Drainable } from './listener.ts';
import { httpState, responseInFlight } from './http-tracking.ts';

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

/** Idle connections closed per turn of the event loop. */
const CLOSE_BATCH = 256;

function isEnding(socket: Socket): boolean {
  return socket.destroyed || socket.writableEnded || socket.readableEnded;
}

/** A net.Socket, as opposed to another kind of connection (a seqpacket one). */
function isNetSocket(connection: Drainable): connection is Socket {
  return 'writableEnded' in connection;
}

export function drainSockets(sockets: Drainable[], options: Required<Pick<DrainOptions, 'timeout'>> & DrainOptions): DrainHandle {
  const started = performance.now();
  const open = new Set(sockets.filter((s) => !s.destroyed));
  const total = open.size;
  let completed = 0;
  let closedIdle = 0;
  let destroyed = 0;
  let sessions = 0;
  let streams = 0;
  let streamsDestroyed = 0;
  const http2Of = (socket: Drainable) => (isNetSocket(socket) ? httpState(socket)?.http2 : undefined);
  for (const socket of open) {
    const h2 = http2Of(socket);
    if (h2 && !h2.session.destroyed) {
      sessions++;
      streams += h2.streams.size;
    }
  }
  const closedByUs = new Set<Drainable>();
  let finish!: (timedOut: boolean) => void;
  let cancel!: () => void;

  const result = new Promise<DrainResult>((resolve) => {
    let done = false;
    let sweepTimer: NodeJS.Timeout | undefined;
    /** The rest of a sweep, on the next turn (see CLOSE_BATCH). */
    let continuation: NodeJS.Immediate | undefined;
    let deadlineTimer: NodeJS.Timeout | undefined;
    finish = (timedOut: boolean) => {
      if (done) return;
      done = true;
      clearInterval(sweepTimer);
      clearImmediate(continuation);
      clearTimeout(deadlineTimer);
      if (timedOut) {
        for (const socket of open) {
          socket.off('close', onClose);
          streamsDestroyed += http2Of(socket)?.streams.size ?? 0;
          socket.destroy();
          destroyed++;
        }
        open.clear();
      }
      resolve({ connections: total, completed, closedIdle, destroyed, sessions, streams, streamsDestroyed, elapsedMs: performance.now() - started, timedOut });
    };
    cancel = () => {
      if (done) return;
      done = true;
      clearInterval(sweepTimer);
      clearImmediate(continuation);
      clearTimeout(deadlineTimer);
      for (const socket of open) socket.off('close', onClose);
    };
    const onClose = function (this: Drainable) {
      if (!open.delete(this)) return;
      if (closedByUs.has(this)) closedIdle++;
      else completed++;
      if (open.size === 0) finish(false);
    };
    for (const socket of open) socket.on('close', onClose);
    if (open.size === 0) return finish(false);

    // Idle HTTP connections: close once idle for the grace the server advertised.
    // At most CLOSE_BATCH closes per turn of the event loop: each costs the old
    // generation tens of µs (mostly the close(2) itself), and its connections
    // still being served must not wait for thousands of them at once.
    const sweep = () => {
      continuation = undefined;
      const now = performance.now();
      let closes = 0;
      for (const socket of open) {
        if (closedByUs.has(socket) || !isNetSocket(socket)) continue;
        if (closes === CLOSE_BATCH) {
          continuation = setImmediate(sweep);
          return;
        }
        const state = httpState(socket);
        // HTTP/2: the session went away gracefully at the stop and ends with its last stream.
        if (!state || state.detached || state.http2 || responseInFlight(state)) continue;
        // Ending already (a response said Connection: close, or the peer hung up):
        // it completes by itself; closing it is not ours to count.
        if (isEnding(socket) || (state.endpoint !== undefined && isEnding(state.endpoint))) continue;
        const grace = options.idleTimeout ?? state.idleGraceMs;
        if (now - state.lastActive >= grace) {
          closedByUs.add(socket);
          closes++;
          // Plain TCP: closed at once (a FIN: nothing is unread or unsent on an
          // idle connection). Not end(): the peer's FIN would make node:http end
          // the socket a second time, which builds an error with a stack for
          // nothing (about 20 µs per connection, 0.2 s for 10,000), and the drain
          // would wait for every peer. TLS: end() sends close_notify first.
          if (state.endpoint === undefined || state.endpoint === socket) socket.destroy();
          else state.endpoint.end();
        }
      }
    };
    sweep();
    sweepTimer = setInterval(() => continuation === undefined && sweep(), 100);
    deadlineTimer = setTimeout(() => finish(true), options.timeout);
  });
  return { result, force: () => finish(true), cancel: () => cancel() };
}
