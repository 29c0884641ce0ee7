/**
 * The same service with ecdysis: SIGHUP upgrades, SIGTERM/SIGINT stop.
 *
 * ACCEPT picks how connections reach the http.Server (the steady-state
 * comparison): 'serve' (default) = listener.serve(server); 'iterator' =
 * for await (const socket of listener); 'observable' = listener.connections().
 * LISTENERS opens that many TCP listeners in all (the first on PORT, the rest on
 * port 0), each with its own http.Server, as node:http has one server per
 * listening socket. KEEP_ALIVE_MS sets the server's
 * keepAliveTimeout; DRAIN_IDLE_MS the drain's idleTimeout (default: the
 * keepAliveTimeout, as the library does); NICE_WHILE_STARTING the option
 * niceWhileStarting. BENCH_EVENTS=0: no events() subscription (see lifecycle.mjs).
 * WORKERS=N: option `workers` (the primary records 'primary', each worker 'serving').
 */
import { createServer } from 'node:http';
import { handle } from './handler.mjs';
import { record, recordEvents } from './lifecycle.mjs';

// The phases of the start, for the report (imports above are evaluated before this line).
const startedAt = Date.now();
const { Ecdysis } = await import('../../dist/index.js');
const env = process.env;
const importedAt = Date.now();
const ecdysis = await Ecdysis.create({
  upgradeOn: ['SIGHUP'],
  stopOn: ['SIGTERM', 'SIGINT'],
  ...(env.NICE_WHILE_STARTING ? { niceWhileStarting: Number(env.NICE_WHILE_STARTING) } : {}),
  ...(env.WORKERS ? { workers: Number(env.WORKERS) } : {}),
});
const createdAt = Date.now();

const accept = {
  serve: (listener, server) => listener.serve(server),
  iterator: async (listener, server) => {
    for await (const socket of listener) server.emit('connection', socket);
  },
  observable: (listener, server) => listener.connections().subscribe((socket) => server.emit('connection', socket)),
}[env.ACCEPT ?? 'serve'];
if (!accept) throw new Error(`unknown ACCEPT=${env.ACCEPT}`);

const listeners = Number(env.LISTENERS ?? 1);
for (let i = 0; i < listeners; i++) {
  const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port: i === 0 ? Number(env.PORT ?? 0) : 0 });
  const server = createServer(handle);
  if (env.KEEP_ALIVE_MS) server.keepAliveTimeout = Number(env.KEEP_ALIVE_MS);
  void accept(listener, server);
}

const listeningAt = Date.now();
await ecdysis.ready();
// The phases of this generation's start, from the process's own clock (performance.timeOrigin: process start).
// Not with BENCH_EVENTS=0 (the memory section): reading `performance` loads perf_hooks (about 0.2 MiB),
// which is the instrument's cost, not the service's, as the plain app reads no clock of the sort.
const phases = env.BENCH_EVENTS === '0' ? undefined : { processStart: Math.round(performance.timeOrigin), startedAt, importedAt, createdAt, listeningAt };
// A primary serves nothing itself: its workers do.
record(ecdysis.role === 'primary' ? 'primary' : 'serving', { generation: ecdysis.generation, ...(phases ? { phases } : {}) });
// After ready(): the events it records all come later, and an Observable loads
// rxjs (bench section "imports"), which is the instrument's cost, not the app's.
recordEvents(ecdysis);
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000, ...(env.DRAIN_IDLE_MS ? { idleTimeout: Number(env.DRAIN_IDLE_MS) } : {}) });
