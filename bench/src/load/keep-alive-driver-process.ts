/**
 * A load that runs a fixed number of keep-alive requests (or new connections) on command, so that
 * server CPU can be compared per request in rounds of equal work. One process
 * for the whole measurement (no start-up per round), raw sockets and a minimal
 * response reader (the client costs far less than the server it measures).
 *
 * Reads one JSON command per line on stdin and answers one JSON line each:
 *   {"op":"open","id":"a","port":8080,"connections":16} → {"ok":true}
 *   {"op":"run","ids":["a","b"],"requests":20000}        → {"ok":true,"results":{"a":{completed,errors,elapsedMs},...}}
 *   {"op":"connect","ids":["a","b"],"requests":5000,"connections":16} → the same
 * A run sends requests to each named server, all at once, each over its own
 * connections, one request in flight per connection, until every one of them
 * has answered `requests` (the faster ones answer a few more). Connections stay
 * open from one run to the next. A connect run opens `requests` new
 * connections to each named server, `connections` at a time, each with one
 * `Connection: close` request read to the server's FIN.
 *
 *   node --import tsx keep-alive-driver-process.ts
 */
import { connect, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

const request = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
/** Every response of the bench handler ends with its body, "ok\n" (content-length 3). */
const BODY = 'ok\n';
const TIMEOUT_MS = 10_000;

interface Conn {
  socket: Socket;
  buffered: string;
  onResponse?: (ok: boolean) => void;
}

export interface RunResult {
  completed: number;
  errors: number;
  elapsedMs: number;
}

const servers = new Map<string, { port: number; conns: Conn[] }>();

function openConnection(port: number): Promise<Conn> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    const conn: Conn = { socket, buffered: '' };
    socket.setEncoding('latin1');
    socket.setTimeout(TIMEOUT_MS, () => socket.destroy(new Error('timeout')));
    socket.on('data', (chunk: string) => {
      conn.buffered += chunk;
      if (!conn.buffered.endsWith(BODY)) return;
      const ok = conn.buffered.startsWith('HTTP/1.1 200');
      conn.buffered = '';
      const done = conn.onResponse;
      conn.onResponse = undefined;
      done?.(ok);
    });
    socket.on('error', (err) => {
      conn.onResponse?.(false);
      reject(err);
    });
    socket.on('close', () => conn.onResponse?.(false));
    socket.once('connect', () => resolve(conn));
  });
}

function send(conn: Conn): Promise<boolean> {
  return new Promise((resolve) => {
    conn.onResponse = resolve;
    conn.socket.write(request);
  });
}

/**
 * Keep-alive requests to every server of a run until each has answered
 * `requests`: they all stay busy to the end of the run (none runs alone after
 * the others are done, which would change how the core is shared).
 */
async function runTogether(group: { port: number; conns: Conn[] }[], requests: number): Promise<RunResult[]> {
  // A connection the server closed since the last run (its keep-alive timeout) is opened again first.
  await Promise.all(
    group.map((server) =>
      Promise.all(
        server.conns.map(async (conn, i) => {
          if (conn.socket.destroyed) server.conns[i] = await openConnection(server.port);
        }),
      ),
    ),
  );
  const results = group.map(() => ({ completed: 0, errors: 0, elapsedMs: 0 }));
  const done = () => results.every((r) => r.completed + r.errors >= requests);
  const started = performance.now();
  await Promise.all(
    group.flatMap((server, s) =>
      server.conns.map(async (conn) => {
        const result = results[s]!;
        while (!done() && !conn.socket.destroyed) {
          if (await send(conn)) result.completed++;
          else result.errors++;
        }
      }),
    ),
  );
  const elapsedMs = performance.now() - started;
  for (const r of results) r.elapsedMs = elapsedMs;
  return results;
}

const closeRequest = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');

/** One new connection, one `Connection: close` request, its response read to the server's FIN. */
function oneConnection(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, noDelay: true });
    let head = '';
    let ok = false;
    socket.setTimeout(TIMEOUT_MS, () => socket.destroy(new Error('timeout')));
    socket.on('connect', () => socket.write(closeRequest));
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 12) head += chunk.toString('latin1', 0, 12);
    });
    socket.on('end', () => (ok = head.startsWith('HTTP/1.1 200')));
    socket.on('error', () => {});
    socket.on('close', () => resolve(ok));
  });
}

/** `total` new connections to `port`, `concurrency` at a time. */
async function runConnections(port: number, total: number, concurrency: number): Promise<RunResult> {
  let next = 0;
  let completed = 0;
  let errors = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        next++;
        if (await oneConnection(port)) completed++;
        else errors++;
      }
    }),
  );
  return { completed, errors, elapsedMs: performance.now() - started };
}

async function handle(command: { op: string; id?: string; ids?: string[]; port?: number; connections?: number; requests?: number }): Promise<object> {
  if (command.op === 'open') {
    const conns = await Promise.all(Array.from({ length: command.connections! }, () => openConnection(command.port!)));
    servers.set(command.id!, { port: command.port!, conns });
    return { ok: true };
  }
  if (command.op === 'run') {
    const ids = command.ids!;
    const results = await runTogether(ids.map((id) => servers.get(id)!), command.requests!);
    return { ok: true, results: Object.fromEntries(ids.map((id, i) => [id, results[i]])) };
  }
  if (command.op === 'connect') {
    // New connections, one request each: to the servers opened under these ids, `connections` at a time each.
    const ids = command.ids!;
    const results = await Promise.all(ids.map((id) => runConnections(servers.get(id)!.port, command.requests!, command.connections!)));
    return { ok: true, results: Object.fromEntries(ids.map((id, i) => [id, results[i]])) };
  }
  if (command.op === 'close') {
    for (const { conns } of servers.values()) for (const conn of conns) conn.socket.destroy();
    servers.clear();
    return { ok: true };
  }
  throw new Error(`unknown op ${command.op}`);
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer: object;
  try {
    answer = await handle(JSON.parse(line));
  } catch (err) {
    answer = { ok: false, error: (err as Error).message };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}
for (const { conns } of servers.values()) for (const conn of conns) conn.socket.destroy();
