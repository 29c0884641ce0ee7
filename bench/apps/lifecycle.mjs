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

/** An ecdysis app's lifecycle events, as records. */
export function recordEvents(ecdysis) {
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
