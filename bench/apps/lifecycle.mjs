/**
 * What the apps tell the bench driver: one JSON line per lifecycle moment
 * ({ t, pid, event, ...detail }) appended to the file named by BENCH_LOG.
 * Appends of one short line are atomic, so every process of every generation
 * can share the file; the driver reads it to time hand-overs from outside.
 * The process's exit is recorded here too, as late as Node allows.
 */
import { appendFileSync } from 'node:fs';

const file = process.env.BENCH_LOG;

export function record(event, detail = {}) {
  if (!file) return;
  appendFileSync(file, `${JSON.stringify({ t: Date.now(), pid: process.pid, event, ...detail })}\n`);
}

process.on('exit', (code) => record('exit', { code }));

/**
 * An ecdysis app's lifecycle events, as records. BENCH_EVENTS=0: none (the
 * memory section measures the service without the Observable this loads).
 */
export function recordEvents(ecdysis) {
  if (process.env.BENCH_EVENTS === '0') return;
  ecdysis.events().subscribe((event) => {
    switch (event.type) {
      case 'requested':
      case 'child-spawned':
        return record(event.type, { at: event.time });
      case 'child-ready':
        return record(event.type, { at: event.time, childPid: event.childPid, elapsedMs: event.elapsedMs });
      case 'child-failed':
        return record(event.type, { at: event.time, code: event.error.code, message: event.error.message });
      case 'drained':
        return record(event.type, { at: event.time, result: event.result });
    }
  });
}

/**
 * The graceful stop of the apps without ecdysis, on SIGTERM or SIGINT (pm2's
 * signal): server.close(), then `more()` (HTTP/2: GOAWAY to each session), and
 * process.exit() once the server has closed, bounded by STOP_TIMEOUT (a real
 * service has a bound: keep-alive clients can keep a closing server busy).
 */
export function stopGracefullyOnSignal(server, more = () => {}) {
  let stopping = false;
  const stop = (signal) => {
    if (stopping) return;
    stopping = true;
    record('stopping', { signal });
    server.close(() => process.exit(0));
    more();
    setTimeout(() => process.exit(0), Number(process.env.STOP_TIMEOUT ?? 10_000)).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
