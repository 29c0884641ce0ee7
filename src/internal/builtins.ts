/**
 * Node modules the library needs only on some paths (an upgrade, a PID file, a
 * host name to resolve, UDP), loaded when first used: a generation that starts
 * does not pay for them (each costs 2 to 6 ms of start-up). Loaded once, cached
 * by Node.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export const childProcess = (): typeof import('node:child_process') => require('node:child_process');
export const crypto = (): typeof import('node:crypto') => require('node:crypto');
export const dns = (): typeof import('node:dns') => require('node:dns');
export const dgram = (): typeof import('node:dgram') => require('node:dgram');
/** Node's net.Server#listen() loads it on its first call, whatever the server. */
export const cluster = (): typeof import('node:cluster').default => require('node:cluster');
