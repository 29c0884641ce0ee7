/**
 * Node modules the library needs only on some paths (an upgrade, a PID file, a
 * host name to resolve, UDP), loaded when first used: a generation that starts
 * does not pay for them (each costs 2 to 6 ms of start-up). Loaded once, cached
 * by Node.
 */
import { createRequire } from 'node:module';

/** process.getBuiltinModule (Node 20.16+), else a require made on first use (making one at import cost 0.6 ms of it). */
function builtin<T>(name: string): T {
  return (process.getBuiltinModule?.(name) as T | undefined) ?? (createRequire(import.meta.url)(name) as T);
}

export const childProcess = (): typeof import('node:child_process') => builtin('node:child_process');
export const crypto = (): typeof import('node:crypto') => builtin('node:crypto');
export const dns = (): typeof import('node:dns') => builtin('node:dns');
export const dgram = (): typeof import('node:dgram') => builtin('node:dgram');
/** With module.flushCompileCache (Node 22.10+), which @types/node 20 does not know. */
export const nodeModule = (): typeof import('node:module') & { flushCompileCache?: () => void } => builtin('node:module');
/** Node's net.Server#listen() loads it on its first call, whatever the server. */
export const cluster = (): typeof import('node:cluster').default => builtin('node:cluster');
