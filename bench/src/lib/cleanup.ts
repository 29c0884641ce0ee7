/**
 * Last-resort cleanup: synchronous hooks run when the driver exits, however it
 * exits (an error, Ctrl-C), so that nothing the bench started outlives it.
 */
import { killAllTracked } from './children.ts';

const hooks = new Set<() => void>();
let installed = false;

/** Run `hook` when the driver exits; returns a function that removes it. */
export function onExit(hook: () => void): () => void {
  install();
  hooks.add(hook);
  return () => hooks.delete(hook);
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', () => {
    for (const hook of hooks) {
      try {
        hook();
      } catch {
        // Best effort: keep going with the others.
      }
    }
    killAllTracked();
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\nbench: ${signal}, cleaning up\n`);
      process.exit(130);
    });
  }
}
