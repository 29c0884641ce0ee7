/**
 * Clients for the line-service fixture that never retry and count every failure
 * by kind: refused, reset, closed without an answer, timeout.
 */
import { connect, type Socket } from 'node:net';
import { onLines } from '../../examples/lib/lines.ts';

export type FailureKind = 'refused' | 'reset' | 'closed' | 'timeout' | 'other';

export interface LoadStats {
  ok: number;
  failures: Record<FailureKind, number>;
  /** Generations that answered, by number. */
  generations: Set<number>;
  /** Connections the server closed cleanly after saying so. */
  cleanCloses: number;
  errors: string[];
}

export function newStats(): LoadStats {
  return { ok: 0, failures: { refused: 0, reset: 0, closed: 0, timeout: 0, other: 0 }, generations: new Set(), cleanCloses: 0, errors: [] };
}

export function totalFailures(stats: LoadStats): number {
  return Object.values(stats.failures).reduce((a, b) => a + b, 0);
}

function classify(err: NodeJS.ErrnoException): FailureKind {
  if (err.code === 'ECONNREFUSED') return 'refused';
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return 'reset';
  return 'other';
}

/** One request on a new connection. Resolves with the answer line, rejects with a classified error. */
export function lineRequest(target: { port: number } | { path: string }, line: string, timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = 'port' in target ? connect(target.port, '127.0.0.1') : connect(target.path);
    let settled = false;
    const settle = (err: (Error & { kind?: FailureKind }) | undefined, answer?: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(answer!);
    };
    const timer = setTimeout(() => settle(Object.assign(new Error('timeout'), { kind: 'timeout' as const })), timeoutMs);
    socket.on('connect', () => socket.write(`${line}\n`));
    onLines(socket, (answer) => settle(undefined, answer));
    socket.on('error', (err: NodeJS.ErrnoException) => settle(Object.assign(err, { kind: classify(err) })));
    socket.on('close', () => settle(Object.assign(new Error('closed without an answer'), { kind: 'closed' as const })));
  });
}

function record(stats: LoadStats, answer: string): boolean {
  const m = /^pong (\d+) (\d+)( close)?$/.exec(answer);
  if (!m) return false;
  stats.ok++;
  stats.generations.add(Number(m[1]));
  return m[3] !== undefined;
}

function fail(stats: LoadStats, err: Error & { kind?: FailureKind }): void {
  const kind = err.kind ?? 'other';
  stats.failures[kind]++;
  if (stats.errors.length < 20) stats.errors.push(`${kind}: ${err.message}`);
}

/** A client that opens a new connection per request, back to back, until stopped. */
export function connectionPerRequestLoad(port: number, stats: LoadStats): { stop(): Promise<void> } {
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        record(stats, await lineRequest({ port }, 'ping'));
      } catch (err) {
        fail(stats, err as Error);
      }
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}

/**
 * A client that holds one connection and streams requests through it; when the
 * server says its reply is the last ("close"), it expects a clean end and opens
 * a new connection. Anything else ending a connection is a failure.
 */
export function streamingLoad(port: number, stats: LoadStats): { stop(): Promise<void> } {
  let running = true;
  const runConnection = () =>
    new Promise<void>((resolve) => {
      const socket: Socket = connect(port, '127.0.0.1');
      let outstanding = false;
      let announcedClose = false;
      let finished = false;
      const finish = (err?: Error & { kind?: FailureKind }) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        if (err) fail(stats, err);
        socket.destroy();
        resolve();
      };
      let timer: NodeJS.Timeout | undefined;
      const send = () => {
        if (!running) return finish();
        outstanding = true;
        clearTimeout(timer);
        timer = setTimeout(() => finish(Object.assign(new Error('timeout'), { kind: 'timeout' as const })), 15_000);
        socket.write('ping\n');
      };
      socket.on('connect', send);
      onLines(socket, (line) => {
        outstanding = false;
        announcedClose = record(stats, line);
        if (!announcedClose) send();
      });
      socket.on('error', (err: NodeJS.ErrnoException) => finish(Object.assign(err, { kind: classify(err) })));
      socket.on('end', () => {
        if (announcedClose && !outstanding) {
          stats.cleanCloses++;
          finish();
        } else {
          finish(Object.assign(new Error(outstanding ? 'closed with a request outstanding' : 'closed without notice'), { kind: 'closed' as const }));
        }
      });
      socket.on('close', () => finish(outstanding ? Object.assign(new Error('closed'), { kind: 'closed' as const }) : undefined));
    });
  const loop = (async () => {
    while (running) await runConnection();
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
    },
  };
}
