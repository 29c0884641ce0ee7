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
const cpuNow = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
const startedAt = Date.now();
const startedCpu = cpuNow();
const { Ecdysis } = await import('../../dist/index.js');
const env = process.env;
const importedAt = Date.now();
const importedCpu = cpuNow();
const ecdysis = await Ecdysis.create({
  upgradeOn: ['SIGHUP'],
  stopOn: ['SIGTERM', 'SIGINT'],
  ...(env.NICE_WHILE_STARTING ? { niceWhileStarting: Number(env.NICE_WHILE_STARTING) } : {}),
  ...(env.WORKERS ? { workers: Number(env.WORKERS) } : {}),
});
const createdAt = Date.now();
const createdCpu = cpuNow();

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
const listeningCpu = cpuNow();
await ecdysis.ready();
// STALL=1: this generation's own event-loop delay, outside upgrades and in its upgrade window (stall section).
const stall = env.STALL === '1' ? watchStall() : undefined;
// The phases of this generation's start, from the process's own clock (process.uptime(): since the process started; no performance global, which loads perf_hooks).
// CPU time (user + system, ms) used by then, at the same points.
const cpuMs = { started: startedCpu, imported: importedCpu, created: createdCpu, listening: listeningCpu, ready: cpuNow() };
const phases = { processStart: Math.round(Date.now() - process.uptime() * 1000), startedAt, importedAt, createdAt, listeningAt, cpuMs: cpuMs.ready, cpu: cpuMs };
// A primary serves nothing itself: its workers do.
record(ecdysis.role === 'primary' ? 'primary' : 'serving', { generation: ecdysis.generation, ...(phases ? { phases } : {}) });
// After ready(): the events it records all come later, and an Observable loads
// rxjs (bench section "imports"), which is the instrument's cost, not the app's.
recordEvents(ecdysis);
await ecdysis.exit;
// The stall window ends with the drain too: in its probation after it, this generation serves nothing.
recordDrainDone(stall);
await ecdysis.drain({ timeout: 30_000, ...(env.DRAIN_IDLE_MS ? { idleTimeout: Number(env.DRAIN_IDLE_MS) } : {}) });

/**
 * 'drain-done' when the drain is over and the generation serves nothing (state
 * 'probation', where it stays for the option's 5 s to take the service back if
 * its successor fails, or 'drained'): the end of the upgrade window for the
 * latency split. Polled, as events() would load rxjs.
 */
function recordDrainDone(then) {
  const poll = setInterval(() => {
    if (ecdysis.state !== 'probation' && ecdysis.state !== 'drained') return;
    clearInterval(poll);
    record('drain-done');
    then?.();
  }, 1);
  poll.unref();
}

/**
 * The event-loop delay as a 1 ms interval timer sees it (how late each tick
 * comes; not monitorEventLoopDelay, which misses a block in the turn of its
 * reset): the max from STALL_SETTLE_MS after ready() to the upgrade's trigger
 * (this process's own SIGHUP, which the library also takes), and the max from
 * the trigger to the end of the drain, recorded as 'stall' then. No events()
 * subscription: it would load rxjs in the next generation, inside the window.
 */
function watchStall() {
  let last = performance.now();
  let lastCpu = cpuNow();
  let max = 0;
  // The part of a late tick that this process spent on a CPU (its own work, all threads), not waiting for one.
  let maxBusy = 0;
  let maxBusyAt = 0;
  let outside = { ms: 0, busyMs: 0 };
  let triggeredAt = 0;
  setInterval(() => {
    const now = performance.now();
    const cpu = cpuNow();
    const late = now - last - 1;
    max = Math.max(max, late);
    const busy = Math.min(late, cpu - lastCpu);
    if (busy > maxBusy) {
      maxBusy = busy;
      maxBusyAt = now - triggeredAt;
    }
    last = now;
    lastCpu = cpu;
  }, 1).unref();
  setTimeout(() => (max = maxBusy = 0), Number(env.STALL_SETTLE_MS ?? 500)).unref();
  process.once('SIGHUP', () => {
    outside = { ms: max, busyMs: maxBusy };
    max = maxBusy = 0;
    triggeredAt = performance.now();
  });
  return () =>
    record('stall', { generation: ecdysis.generation, outsideMs: outside.ms, outsideBusyMs: outside.busyMs, windowMs: max, windowBusyMs: maxBusy, windowBusyAtMs: maxBusyAt, windowLengthMs: performance.now() - triggeredAt });
}
