/**
 * sd_notify without libsystemd: "KEY=VALUE" lines in one datagram to
 * $NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'),
 * sent by the addon (Node has no Unix datagram client). Also the watchdog:
 * WATCHDOG=1 from the event loop, so a hung loop is caught.
 *
 * A failure to notify never breaks serving: it is a debuglog line, and the
 * caller is told (once per run of failures) so it can emit an event.
 */
import { debuglog } from 'node:util';
import { native } from '../internal/native.ts';

const debug = debuglog('ecdysis');

export type NotifyFields = Record<string, string | number>;

export class ServiceManager {
  /** The notify socket, as NOTIFY_SOCKET names it. */
  readonly socket: string;
  readonly #onFailure: (error: Error, message: string) => void;
  #failing = false;
  #watchdog: NodeJS.Timeout | undefined;

  /**
   * The service manager this process reports to: `NOTIFY_SOCKET` when it is
   * set and `option` is 'auto'. The variable is left in the environment, so the
   * next generation (which becomes the main process) reports too.
   */
  static fromEnvironment(option: 'auto' | false, env: NodeJS.ProcessEnv, onFailure: (error: Error, message: string) => void): ServiceManager | undefined {
    const socket = env.NOTIFY_SOCKET;
    if (option === false || !socket) return undefined;
    if (!socket.startsWith('/') && !socket.startsWith('@')) {
      debug('NOTIFY_SOCKET=%s is neither an absolute path nor an abstract name: ignored', socket);
      return undefined;
    }
    return new ServiceManager(socket, onFailure);
  }

  private constructor(socket: string, onFailure: (error: Error, message: string) => void) {
    this.socket = socket;
    this.#onFailure = onFailure;
  }

  /** One notification; returns whether it was sent. `fds` go with it (FDSTORE=1). */
  notify(fields: NotifyFields, fds?: number[]): boolean {
    const message = formatNotification(fields);
    try {
      native().notify(this.socket, message, fds);
      this.#failing = false;
      debug('notify: %s', message.replaceAll('\n', ' '));
      return true;
    } catch (err) {
      debug('notify %s failed: %s', message.replaceAll('\n', ' '), (err as Error).message);
      if (!this.#failing) this.#onFailure(err as Error, message);
      this.#failing = true;
      return false;
    }
  }

  /**
   * Ping the watchdog every half of `usec` from the event loop (a blocked loop
   * misses its pings and systemd acts). The timer never keeps the process alive.
   */
  startWatchdog(usec: number): void {
    this.stopWatchdog();
    const everyMs = Math.max(1, Math.floor(usec / 2000));
    this.notify({ WATCHDOG: 1 });
    this.#watchdog = setInterval(() => this.notify({ WATCHDOG: 1 }), everyMs);
    this.#watchdog.unref();
  }

  stopWatchdog(): void {
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }
}

/**
 * "KEY=VALUE" lines. A value with a newline would smuggle in another field
 * (a STATUS= that says MAINPID=...): newlines become spaces.
 */
export function formatNotification(fields: NotifyFields): string {
  return Object.entries(fields)
    .map(([key, value]) => {
      if (!/^[A-Z_][A-Z0-9_]*$/.test(key)) throw new TypeError(`not a notification field name: ${key}`);
      return `${key}=${String(value).replace(/[\r\n]+/g, ' ')}`;
    })
    .join('\n');
}

/** CLOCK_MONOTONIC now, in microseconds, as RELOADING=1 wants it in MONOTONIC_USEC. */
export function monotonicUsec(): bigint {
  return process.hrtime.bigint() / 1000n;
}

/**
 * The watchdog interval this process owns, from WATCHDOG_USEC and WATCHDOG_PID
 * (the sd_watchdog_enabled rules: the pid, when set, must be ours).
 */
export function watchdogUsec(env: NodeJS.ProcessEnv): number | undefined {
  const usec = env.WATCHDOG_USEC;
  if (!usec || !/^\d{1,15}$/.test(usec) || Number(usec) === 0) return undefined;
  const pid = env.WATCHDOG_PID;
  if (pid !== undefined && pid !== String(process.pid)) return undefined;
  return Number(usec);
}
