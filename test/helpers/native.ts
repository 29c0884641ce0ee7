/**
 * Helpers for the addon's unit tests: a recorder of PacketSocket/SeqpacketServer
 * callbacks that tests can wait on, temporary socket directories, fd counting,
 * and running a fixture script in a child process with the TypeScript loader.
 */
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { runCommand, type CommandResult } from './run.ts';
import type { NativeSystemError, PacketSocketCallbacks, SeqpacketServerCallbacks } from '../../src/internal/native.ts';

export const fixturesDir = fileURLToPath(new URL('../fixtures/', import.meta.url));

export interface Message {
  data: Buffer;
  address: string | undefined;
  port: number | undefined;
}

/** Records every callback; `until` resolves once a condition holds, checked after each event. */
export class Recorder implements PacketSocketCallbacks, SeqpacketServerCallbacks {
  readonly messages: Message[] = [];
  readonly errors: NativeSystemError[] = [];
  readonly connections: number[] = [];
  ended = 0;
  drains = 0;
  #waiters = new Set<() => void>();
  /** Called after each event is recorded (for tests that act from inside a callback). */
  after?: (event: 'message' | 'error' | 'end' | 'drain' | 'connection') => void;

  onMessage = (data: Buffer, address: string | undefined, port: number | undefined): void => {
    this.messages.push({ data, address, port });
    this.#event('message');
  };
  onError = (err: NativeSystemError): void => {
    this.errors.push(err);
    this.#event('error');
  };
  onEnd = (): void => {
    this.ended += 1;
    this.#event('end');
  };
  onDrain = (): void => {
    this.drains += 1;
    this.#event('drain');
  };
  onConnection = (fd: number): void => {
    this.connections.push(fd);
    this.#event('connection');
  };

  #event(event: 'message' | 'error' | 'end' | 'drain' | 'connection'): void {
    this.after?.(event);
    for (const wake of [...this.#waiters]) wake();
  }

  /** Waits (event-driven, with a deadline) until `condition()` is true. */
  until(condition: () => boolean, what = 'condition', timeoutMs = 10_000): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!condition()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what} (messages ${this.messages.length}, errors ${this.errors.map((e) => e.code).join(',')}, ended ${this.ended}, drains ${this.drains})`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }
}

/** A fresh directory for socket paths, removed at teardown. */
export function socketDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-native-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

let abstractCounter = 0;
/** A unique Linux abstract socket name (leading NUL). */
export function abstractName(label: string): string {
  abstractCounter += 1;
  return `\0ecdysis-test-${process.pid}-${label}-${abstractCounter}`;
}

/** This process's open fds, each with what it refers to (readlink of /proc/self/fd/N). */
export function openFds(): Map<number, string> {
  const fds = new Map<number, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      fds.set(Number(name), readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // The fd readdir used, closed since.
    }
  }
  return fds;
}

/** O_NONBLOCK, read from /proc/self/fdinfo (flags are octal). */
export function isNonBlocking(fd: number): boolean {
  const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
  return (parseInt(flags ?? '0', 8) & 0o4000) !== 0;
}

/** One turn of the event loop (poll phase included), so that ready sockets get their callbacks. */
export function loopTurns(n = 3): Promise<void> {
  return new Promise((resolve) => {
    const step = (left: number) => (left === 0 ? resolve() : setImmediate(() => step(left - 1)));
    step(n);
  });
}

export type ChildResult = CommandResult;

/** Runs test/fixtures/<name> with the TypeScript loader; resolves when it exits (killed after the deadline). */
export function runFixture(name: string, args: string[] = [], timeoutMs = 60_000): Promise<ChildResult> {
  return runCommand(process.execPath, ['--import', 'tsx', join(fixturesDir, name), ...args], { timeoutMs });
}

/** The JSON lines a fixture printed. */
export function jsonLines(stdout: string): Record<string, unknown>[] {
  return stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** t.throws, then every listed property of the error compared (t.throws itself checks only code, message, name...). */
export function throwsLike(t: ExecutionContext, fn: () => unknown, expected: Record<string, unknown>): NativeSystemError {
  const error = t.throws(fn) as NativeSystemError;
  t.like(error, expected);
  return error;
}
