/**
 * Options: defaults by spread, then everything validated up front, with
 * messages that name the option.
 */
import { isAbsolute, resolve as resolvePath } from 'node:path';
import { EcdysisError, invalidOption } from '../errors.ts';
import type { SpawnCommand } from './parent.ts';
import { isCatchableSignal, type Trigger, type TriggerAction } from './triggers.ts';

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
   * to take the service back if its successor dies. Default 0 (it still takes
   * the service back while it drains).
   */
  probation?: number;
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
}

export interface ResolvedOptions {
  signals: Map<NodeJS.Signals, TriggerAction>;
  upgradeTimeout: number;
  pidFile: string | undefined;
  pidFileMode: number;
  probation: number;
  systemd: 'auto' | false;
  fdStore: boolean;
  command: EcdysisOptions['command'];
}

const DEFAULTS = {
  upgradeOn: ['SIGHUP'] as Trigger[],
  stopOn: ['SIGTERM', 'SIGINT'] as Trigger[],
  partialStopOn: [] as Trigger[],
  upgradeTimeout: 60_000,
  pidFileMode: 0o644,
  probation: 0,
  systemd: 'auto' as 'auto' | false,
  fdStore: false,
};

/** The largest delay setTimeout takes. */
export const MAX_TIMEOUT_MS = 2_147_483_647;

const KNOWN = new Set(['upgradeOn', 'stopOn', 'partialStopOn', 'upgradeTimeout', 'pidFile', 'pidFileMode', 'probation', 'systemd', 'fdStore', 'command']);

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
  const triggerLists: [keyof typeof DEFAULTS & string, TriggerAction][] = [
    ['upgradeOn', 'upgrade'],
    ['stopOn', 'stop'],
    ['partialStopOn', 'partial-stop'],
  ];
  for (const [name, action] of triggerLists) {
    const list = options[name] as unknown;
    if (!Array.isArray(list)) throw invalidOption(`options.${name}`, 'must be an array of signal names', list);
    list.forEach((trigger: unknown, index) => {
      const where = `options.${name}[${index}]`;
      if (typeof trigger === 'object' && trigger !== null && 'socket' in trigger) {
        throw new EcdysisError(
          'ERR_ECDYSIS_INVALID_OPTION',
          `"${where}": control socket triggers are not supported in this version; use a signal`,
          { option: where },
        );
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

  const command = options.command;
  if (command !== undefined && typeof command !== 'function') validateCommand(command, 'options.command');

  return { signals, upgradeTimeout: timeout, pidFile: pidFile === undefined ? undefined : resolvePath(pidFile), pidFileMode, probation, systemd: options.systemd, fdStore, command };
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

export function validateInteger(value: unknown, where: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidOption(where, `must be an integer from ${min} to ${max}`, value);
  }
  return value;
}

export function validateBoolean(value: unknown, where: string): boolean {
  if (typeof value !== 'boolean') throw invalidOption(where, 'must be a boolean', value);
  return value;
}
