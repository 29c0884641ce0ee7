/**
 * Logs an Ecdysis lifecycle for the examples: one human line per event on
 * stderr, or, with EVENTS=json, one JSON line per event on stdout (the demo
 * reads those). Every generation inherits the same stdout/stderr.
 */
import type { Ecdysis, EcdysisEvent } from 'ecdysis';

export function logLifecycle(ecdysis: Ecdysis, name: string): void {
  const json = process.env.EVENTS === 'json';
  // With workers, every process of a group logs: which one is it.
  const who = ecdysis.worker ? { role: 'worker', worker: ecdysis.worker.index } : { role: ecdysis.role };
  const label = ecdysis.worker ? ` worker ${ecdysis.worker.index}` : ecdysis.role === 'primary' ? ' primary' : '';
  ecdysis.events().subscribe((event: EcdysisEvent) => {
    if (json) {
      const error = 'error' in event ? { code: event.error.code, message: event.error.message } : {};
      process.stdout.write(`${JSON.stringify({ ...event, ...error, ...who })}\n`);
      return;
    }
    const detail =
      event.type === 'child-failed' ? `${event.error.code}: ${event.error.message}` :
      event.type === 'refused' ? event.error.code :
      event.type === 'child-ready' ? `pid ${event.childPid} after ${Math.round(event.elapsedMs)} ms` :
      event.type === 'drained' ? JSON.stringify(event.result) :
      event.type === 'exiting' ? `${event.mode} (${event.reason})` :
      event.type === 'worker-ready' ? `worker ${event.index} pid ${event.workerPid}` :
      event.type === 'worker-exited' ? `worker ${event.index} pid ${event.workerPid} (${event.signal ?? `code ${event.exitCode}`}${event.planned ? '' : ', replaced'})` : '';
    process.stderr.write(`[${name} gen ${event.generation}${label} pid ${event.pid}] ${event.type} ${detail}\n`);
  });
}
