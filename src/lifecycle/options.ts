/**
 * Options: defaults by spread, then everything validated up front, with
 * messages that name the option.
 */
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { addControlSocket, type ControlSocketConfig } from '../triggers/control-config.ts';
import { resolveProbes, type ProbesConfig, type ProbesOption } from '../triggers/probes-config.ts';
import { timerTrigger, type TimerTriggerConfig } from '../triggers/timers.ts';
import { invalidOption } from '../errors.ts';
import type { SpawnCommand } from '../generation/successor.ts';
import { MAX_DRAINING_CHAIN } from '../wire/protocol.ts';
import { compileCacheDir } from '../internal/compile-cache.ts';
import { MAX_NICE } from '../internal/priority.ts';
import { isCatchableSignal, type Trigger, type TriggerAction } from '../triggers/signals.ts';
import { validateBoolean, validateInteger } from '../internal/validate.ts';

/** How the next generation starts; every field defaults to this process's own. */
export type CommandOverride = Partial<SpawnCommand>;

export interface EcdysisOptions {
  /** Triggers that start an upgrade. Default ['SIGHUP']. */
  upgradeOn?: Trigger[];
  /** Triggers that stop this generation (stop accepting, unlink Unix paths). Default ['SIGTERM', 'SIGINT']. */
  stopOn?: Trigger[];
  /** Triggers that stop accepting but keep sockets and paths for another process. Default []. */
  partialStopOn?: Trigger[];
  /** Milliseconds the next generation has to call ready() before it is killed. Default 60000. */
  upgradeTimeout?: number;
  /** Written atomically by each generation when it is ready. */
  pidFile?: string;
  /** File mode of the PID file. Default 0o644. */
  pidFileMode?: number;
  /**
   * Milliseconds the old generation stays alive, idle, after its drain, ready
   * to take the service back if its successor dies. Default 5000: a new version
   * that crashes soon after it took over costs only the requests it held. It
   * never holds an upgrade back (the successor may upgrade once the drain is
   * over, and then the probation ends). 0: no probation (the old generation
   * still takes the service back while it drains).
   */
  probation?: number;
  /** The most bytes of state one hand-over may carry (handoff.state()), and of unread bytes one moved connection may. Default 64 MiB. */
  maxHandoffBytes?: number;
  /**
   * 'auto': when NOTIFY_SOCKET is set, report to systemd (READY=1, RELOADING=1,
   * MAINPID= at each hand-over, STOPPING=1, the watchdog). false: never. Default 'auto'.
   */
  systemd?: 'auto' | false;
  /**
   * Under systemd, keep the listening sockets in its fd store (FDSTORE=1) so that
   * a crash or restart of the service keeps them open and queueing (needs
   * FileDescriptorStoreMax= in the unit). Default false.
   */
  fdStore?: boolean;
  /**
   * How the next generation starts: a fixed override, or a function called at
   * each upgrade (e.g. to follow a `current` release symlink).
   */
  command?: CommandOverride | (() => CommandOverride | Promise<CommandOverride>);
  /**
   * How many older generations may drain at once. 1 (the default): a generation
   * whose parent is still alive refuses to upgrade (ERR_ECDYSIS_PARENT_ALIVE), so
   * a deploy never cuts a drain short. From 2 (at most 64): a generation may upgrade
   * as soon as it serves, while older ones drain; when its successor is ready and
   * this would make one draining generation too many, the oldest is told to
   * finish (its drain deadline brought forward to now) and the commit waits
   * until it has drained (at most 5 s).
   */
  maxDrainingGenerations?: number;
  /**
   * Start each next generation with Node's module compile cache
   * (NODE_COMPILE_CACHE; Node 22.1 and later, ignored with a warning before):
   * it loads the application's modules from V8 code an earlier generation
   * cached, which shortens every upgrade's start. `true`: NODE_COMPILE_CACHE if
   * set, else Node's default directory (<tmpdir>/node-compile-cache); or an
   * absolute directory. Default false.
   */
  compileCache?: boolean | string;
  /**
   * Start each next generation this much nicer (1 to 19, added to this
   * generation's nice value, at most 19) and give it this generation's priority
   * back once it is ready: on a machine whose CPUs the service keeps busy, the
   * successor's start-up then takes less from the requests being served (the
   * upgrade takes longer). Needs CAP_SYS_NICE or an RLIMIT_NICE that allows
   * the way back; otherwise not used, with warning ECDYSIS_NICE_UNAVAILABLE.
   * Default 0 (the successor starts at this generation's priority).
   */
  niceWhileStarting?: number;
  /**
   * Lame duck: on a stop (a signal, a control socket, stop()), report
   * not-ready (probes, `health()`, systemd's STOPPING=1) and keep accepting and
   * serving for this many milliseconds first, so that load balancers and
   * Kubernetes stop sending before the listeners close. A second stop ends the
   * delay at once. Upgrades are not delayed. Default 0.
   */
  stopDelay?: number;
  /**
   * A small HTTP listener for health probes and metrics (`GET /livez`,
   * `/readyz`, `/metrics`), handed over to every generation like any other and
   * answered by the serving one: `{ port, host }` (host 127.0.0.1 by default)
   * or `{ socket }` (a Unix path or abstract name, with `mode`).
   */
  probes?: ProbesOption;
}

export interface ResolvedOptions {
  signals: Map<NodeJS.Signals, TriggerAction>;
  upgradeTimeout: number;
  pidFile: string | undefined;
  pidFileMode: number;
  probation: number;
  systemd: 'auto' | false;
  fdStore: boolean;
  maxHandoffBytes: number;
  command: EcdysisOptions['command'];
  maxDrainingGenerations: number;
  /** The compile cache directory for the next generations, or undefined. */
  compileCache: string | undefined;
  /** How much nicer the next generation starts (0: not at all). */
  niceWhileStarting: number;
  /** One per control socket path, with every action its trigger lists give it. */
  controlSockets: ControlSocketConfig[];
  /** upgradeOn's timer triggers (rssAbove, every). */
  timers: TimerTriggerConfig[];
  stopDelay: number;
  probes: ProbesConfig | undefined;
}

const DEFAULTS = {
  upgradeOn: ['SIGHUP'] as Trigger[],
  stopOn: ['SIGTERM', 'SIGINT'] as Trigger[],
  partialStopOn: [] as Trigger[],
  upgradeTimeout: 60_000,
  pidFileMode: 0o644,
  probation: 5_000,
  systemd: 'auto' as 'auto' | false,
  fdStore: false,
  maxHandoffBytes: 64 * 1024 * 1024,
  maxDrainingGenerations: 1,
  niceWhileStarting: 0,
  stopDelay: 0,
};

/** The largest delay setTimeout takes. */
export const MAX_TIMEOUT_MS = 2_147_483_647;

const KNOWN = new Set(['upgradeOn', 'stopOn', 'partialStopOn', 'upgradeTimeout', 'pidFile', 'pidFileMode', 'probation', 'systemd', 'fdStore', 'maxHandoffBytes', 'command', 'maxDrainingGenerations', 'compileCache', 'niceWhileStarting', 'stopDelay', 'probes']);

export function resolveOptions(input: unknown): ResolvedOptions {
  if (input !== undefined && (typeof input !== 'object' || input === null || Array.isArray(input))) {
    throw invalidOption('options', 'must be an object', input);
  }
  for (const name of Object.keys(input ?? {})) {
    if (!KNOWN.has(name)) throw invalidOption(`options.${name}`, 'is not an option', (input as Record<string, unknown>)[name]);
  }
  // An option given as undefined takes its default, as if it were left out.
  const given = Object.fromEntries(Object.entries(input ?? {}).filter(([, value]) => value !== undefined)) as EcdysisOptions;
  const options = { ...DEFAULTS, ...given };

  const signals = new Map<NodeJS.Signals, TriggerAction>();
  const controlSockets = new Map<string, ControlSocketConfig>();
  const timers: TimerTriggerConfig[] = [];
  const triggerLists: [keyof typeof DEFAULTS & string, TriggerAction][] = [
    ['upgradeOn', 'upgrade'],
    ['stopOn', 'stop'],
    ['partialStopOn', 'partial-stop'],
  ];
  for (const [name, action] of triggerLists) {
    const list = options[name] as unknown;
    if (!Array.isArray(list)) throw invalidOption(`options.${name}`, 'must be an array of signal names and { socket }, { rssAbove } or { every } objects', list);
    list.forEach((trigger: unknown, index) => {
      const where = `options.${name}[${index}]`;
      if (typeof trigger === 'object' && trigger !== null && !Array.isArray(trigger)) {
        const timer = timerTrigger(trigger as Record<string, unknown>, where);
        if (timer && action !== 'upgrade') throw invalidOption(where, 'a timer trigger (rssAbove, every) goes in upgradeOn', trigger);
        if (timer) timers.push(timer);
        else addControlSocket(controlSockets, trigger as Record<string, unknown>, action, where);
        return;
      }
      if (!isCatchableSignal(trigger)) {
        throw invalidOption(where, 'must be a signal name that can be caught (e.g. "SIGHUP")', trigger);
      }
      const existing = signals.get(trigger);
      if (existing && existing !== action) {
        throw invalidOption(where, `is already a trigger for ${existing}`, trigger);
      }
      signals.set(trigger, action);
    });
  }

  const timeout = options.upgradeTimeout;
  if (typeof timeout !== 'number' || !Number.isInteger(timeout) || timeout <= 0 || timeout > MAX_TIMEOUT_MS) {
    throw invalidOption('options.upgradeTimeout', 'must be a positive integer (milliseconds)', timeout);
  }

  const pidFile = options.pidFile;
  if (pidFile !== undefined && (typeof pidFile !== 'string' || pidFile === '' || pidFile.includes('\0'))) {
    throw invalidOption('options.pidFile', 'must be a non-empty path', pidFile);
  }
  const pidFileMode = validateInteger(options.pidFileMode, 'options.pidFileMode', 0, 0o777);
  const probation = validateInteger(options.probation, 'options.probation', 0, MAX_TIMEOUT_MS);
  if (options.systemd !== 'auto' && options.systemd !== false) throw invalidOption('options.systemd', "must be 'auto' or false", options.systemd);
  const fdStore = validateBoolean(options.fdStore, 'options.fdStore');
  // Node's largest string is about 512 MiB; a JSON state must fit one.
  const maxHandoffBytes = validateInteger(options.maxHandoffBytes, 'options.maxHandoffBytes', 0, 512 * 1024 * 1024);
  const maxDrainingGenerations = validateInteger(options.maxDrainingGenerations, 'options.maxDrainingGenerations', 1, MAX_DRAINING_CHAIN);
  const cacheOption = options.compileCache;
  if (cacheOption !== undefined && typeof cacheOption !== 'boolean' && !(typeof cacheOption === 'string' && isAbsolute(cacheOption) && !cacheOption.includes('\0'))) {
    throw invalidOption('options.compileCache', 'must be true, false or an absolute directory', cacheOption);
  }
  const niceWhileStarting = validateInteger(options.niceWhileStarting, 'options.niceWhileStarting', 0, MAX_NICE);
  const compileCache = cacheOption === true || typeof cacheOption === 'string' ? compileCacheDir(cacheOption) : undefined;

  const stopDelay = validateInteger(options.stopDelay, 'options.stopDelay', 0, MAX_TIMEOUT_MS);
  const probes = options.probes === undefined ? undefined : resolveProbes(options.probes, 'options.probes');

  const command = options.command;
  if (command !== undefined && typeof command !== 'function') validateCommand(command, 'options.command');

  return { signals, upgradeTimeout: timeout, pidFile: pidFile === undefined ? undefined : resolvePath(pidFile), pidFileMode, probation, systemd: options.systemd, fdStore, maxHandoffBytes, command, maxDrainingGenerations, compileCache, niceWhileStarting, controlSockets: [...controlSockets.values()], timers, stopDelay, probes };
}

export function validateCommand(command: unknown, where: string): CommandOverride {
  if (typeof command !== 'object' || command === null || Array.isArray(command)) {
    throw invalidOption(where, 'must be an object { file, args, cwd, env } or a function returning one', command);
  }
  const c = command as Record<string, unknown>;
  for (const name of Object.keys(c)) {
    if (!['file', 'args', 'cwd', 'env'].includes(name)) throw invalidOption(`${where}.${name}`, 'is not a command field', c[name]);
  }
  if (c.file !== undefined && (typeof c.file !== 'string' || c.file === '')) throw invalidOption(`${where}.file`, 'must be a non-empty string', c.file);
  if (c.args !== undefined && (!Array.isArray(c.args) || !c.args.every((a) => typeof a === 'string'))) {
    throw invalidOption(`${where}.args`, 'must be an array of strings', c.args);
  }
  if (c.cwd !== undefined && (typeof c.cwd !== 'string' || !isAbsolute(c.cwd))) throw invalidOption(`${where}.cwd`, 'must be an absolute path', c.cwd);
  if (c.env !== undefined && (typeof c.env !== 'object' || c.env === null)) throw invalidOption(`${where}.env`, 'must be an object', c.env);
  return c as CommandOverride;
}
