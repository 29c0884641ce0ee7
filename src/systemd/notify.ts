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

/**
 * The variables by which a service manager reaches its service. They are taken
 * out of the environment they were read from, so that no subprocess of the
 * application inherits them and speaks (or claims to be main) in the service's
 * name; the next generation gets them back (`nextGenerationEnvironment`), since
 * it becomes the main process. What sd_notify(3)'s `unset_environment` is for.
 */
const MANAGER_VARIABLES = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID'] as const;
type ManagerVariables = Partial<Record<(typeof MANAGER_VARIABLES)[number], string>>;
const taken = new WeakMap<NodeJS.ProcessEnv, ManagerVariables>();

/** Move the service manager's variables from `env` into the record kept for it, and return that record. */
function takeManagerVariables(env: NodeJS.ProcessEnv): ManagerVariables {
  const record = taken.get(env) ?? {};
  taken.set(env, record);
  for (const name of MANAGER_VARIABLES) {
    const value = env[name];
    if (value === undefined) continue;
    record[name] = value;
    delete env[name];
  }
  return record;
}

/**
 * What the next generation's environment gets back of the variables taken from
 * `process.env`: NOTIFY_SOCKET and WATCHDOG_USEC. Never WATCHDOG_PID: it names
 * this process, and the next generation owns the watchdog once it is main.
 */
export function nextGenerationEnvironment(): NodeJS.ProcessEnv {
  const { NOTIFY_SOCKET, WATCHDOG_USEC } = taken.get(process.env) ?? {};
  return { ...(NOTIFY_SOCKET === undefined ? {} : { NOTIFY_SOCKET }), ...(WATCHDOG_USEC === undefined ? {} : { WATCHDOG_USEC }) };
}

export class ServiceManager {
  /** The notify socket, as NOTIFY_SOCKET names it. */
  readonly socket: string;
  readonly #onFailure: (error: Error, message: string) => void;
  #failing = false;
  #watchdog: NodeJS.Timeout | undefined;

  /**
   * The service manager this process reports to: `NOTIFY_SOCKET` when it is
   * set and `option` is 'auto'. Unless `option` is false, NOTIFY_SOCKET,
   * WATCHDOG_USEC and WATCHDOG_PID are removed from `env` (kept for
   * `watchdogUsec` and the next generation's environment).
   */
  static fromEnvironment(option: 'auto' | false, env: NodeJS.ProcessEnv, onFailure: (error: Error, message: string) => void): ServiceManager | undefined {
    if (option === false) return undefined;
    const socket = takeManagerVariables(env).NOTIFY_SOCKET;
    if (!socket) return undefined;
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
 * (the sd_watchdog_enabled rules: the pid, when set, must be ours), in `env` or
 * taken from it by `ServiceManager.fromEnvironment`.
 */
export function watchdogUsec(env: NodeJS.ProcessEnv): number | undefined {
  const found = { ...taken.get(env), ...env };
  const usec = found.WATCHDOG_USEC;
  if (!usec || !/^\d{1,15}$/.test(usec) || Number(usec) === 0) return undefined;
  const pid = found.WATCHDOG_PID;
  if (pid !== undefined && pid !== String(process.pid)) return undefined;
  return Number(usec);
}
