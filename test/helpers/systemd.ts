/**
 * A real systemd user manager per test (systemd 252 or later; systemd need not be PID 1).
 *
 *   systemdTest('title', async (t) => {                  // ava's test, or test.skip with the reason in
 *     const manager = await startUserManager(t);         // the title when a manager cannot start here
 *     await manager.writeUnit('svc.service', text);      // then daemon-reload
 *     await manager.systemctl('start', 'svc.service');   // { code, stdout, stderr, signal }
 *     await manager.show('svc.service', ['MainPID', 'ActiveState']);
 *     await manager.journal('svc.service');              // the unit's journal messages
 *   });                                                  // teardown: automatic
 *
 * How (test/helpers/systemd-user-manager.sh does the namespace part): the manager gets a cgroup
 * of its own, named after this process and a counter, in every cgroup hierarchy it needs (v2, and
 * the v1 name=systemd tree on a hybrid host); it runs in a private mount namespace whose tmpfs
 * mounts hide the host's /run/systemd, /run/log and /var/log/journal, with its own journald.
 * Everything else lives in a temporary directory (`base`): XDG_RUNTIME_DIR = base/rt (the
 * manager's private bus socket, so `systemctl --user` works from outside the namespace),
 * HOME = base/home (unit files under base/home/.config/systemd/user/).
 *
 * Teardown (t.teardown, so also when the test fails): `systemctl --user exit`, SIGKILL to the
 * manager's pid if it has not exited, `cgroup.kill` of the manager's own cgroup (journald and any
 * process a unit left behind), its cgroups removed, the temporary directory removed. A worker
 * killed by ava's timeout (SIGTERM) or exiting early cleans up synchronously; cgroups left by a
 * worker that was SIGKILLed are removed by the next start in any worker (their owner pid is dead).
 * Nothing is killed but the manager's pid and what is in its cgroups.
 *
 * Services inherit the manager's environment only (PATH, HOME, XDG_RUNTIME_DIR...), not the
 * test's: name absolute paths in unit files (`execLine`, `nodeExecLine`, `fixtureExecLine`,
 * `environmentLines`, `paths`), or give every unit variables with `manager.setEnvironment()`.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fixtureCommand, repoRoot, compiledRoot } from './generations.ts';
import { runCommand, type CommandResult } from './run.ts';

const launcherScript = fileURLToPath(new URL('./systemd-user-manager.sh', import.meta.url));
/** Prefix of every cgroup and temporary directory this helper creates: `ecdysis-sd-<owner pid>-<n>`. */
const prefix = 'ecdysis-sd-';

/** Absolute paths a unit file needs: services do not inherit the test's environment. */
export const paths = {
  /** The node binary running the tests. */
  node: process.execPath,
  repoRoot,
  /** Where `tsc -p tsconfig.test.json` compiles the repository (fixtures run from there). */
  compiledRoot,
};

export type { CommandResult };

export interface SystemctlOptions {
  /** Reject (with the output in the message) unless systemctl exits with 0. Default false. */
  check?: boolean;
  /** The systemctl process is SIGKILLed after this long. Default 90 s (systemd's own default job timeout). */
  timeoutMs?: number;
}

export interface UserManagerOptions {
  /** `systemd --user --log-level=`; 'debug' shows every notify message in the journal. Default 'info'. */
  logLevel?: 'emerg' | 'alert' | 'crit' | 'err' | 'warning' | 'notice' | 'info' | 'debug';
  /** How long to wait for SystemState=running. Default 10 s. */
  startTimeoutMs?: number;
}

/** One journal entry as `journalctl -o json` prints it (MESSAGE decoded to a string). */
export type JournalEntry = Record<string, string | undefined> & { MESSAGE: string };

// ---------------------------------------------------------------------------------------------
// Unit-file text helpers

/**
 * A command line for ExecStart=/ExecStop=...: each word double-quoted, with `\` and `"` escaped,
 * `%` doubled (specifiers) and `$` doubled (variable expansion), so paths are taken literally.
 */
export function execLine(argv: readonly string[]): string {
  return argv.map((word) => `"${word.replace(/[\\"]/g, (c) => `\\${c}`).replace(/%/g, '%%').replace(/\$/g, '$$$$')}"`).join(' ');
}

/** `execLine` of this node binary running `script` with `args`. */
export function nodeExecLine(script: string, ...args: string[]): string {
  return execLine([process.execPath, script, ...args]);
}

/** `execLine` of a compiled fixture of test/fixtures/ (see `fixtureCommand`) with `args`. */
export function fixtureExecLine(fixture: string, ...args: string[]): string {
  return execLine([process.execPath, ...fixtureCommand(fixture), ...args]);
}

/** `Environment=` lines, one per variable, quoted (values are taken literally, `%` escaped). */
export function environmentLines(variables: Record<string, string>): string {
  return Object.entries(variables)
    .map(([name, value]) => `Environment="${`${name}=${value}`.replace(/[\\"]/g, (c) => `\\${c}`).replace(/%/g, '%%')}"`)
    .join('\n');
}

// ---------------------------------------------------------------------------------------------
// Can a manager start here?

interface Hierarchies {
  /** The cgroup v2 mount point (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host). */
  unified: string;
  /** The v1 `name=systemd` mount point on a hybrid or legacy host. */
  namedSystemd?: string;
}

function cgroupHierarchies(): Hierarchies | undefined {
  let unified: string | undefined;
  let namedSystemd: string | undefined;
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, mountPoint, type, options] = line.split(' ');
    if (type === 'cgroup2') unified ??= mountPoint;
    else if (type === 'cgroup' && options?.split(',').includes('name=systemd')) namedSystemd ??= mountPoint;
  }
  return unified ? { unified, ...(namedSystemd ? { namedSystemd } : {}) } : undefined;
}

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).some((dir) => existsSync(join(dir, tool)));
}

let skipReason: string | null | undefined;

/**
 * Why a systemd user manager cannot start here, or undefined when it can. Checked once per
 * process: Linux, root, the systemd binaries and tools, a cgroup v2 hierarchy where a cgroup can
 * be created. ECDYSIS_SYSTEMD_TESTS=0 skips on purpose.
 */
export function systemdUnavailable(): string | undefined {
  if (skipReason === undefined) skipReason = findSkipReason() ?? null;
  return skipReason ?? undefined;
}

function findSkipReason(): string | undefined {
  if (process.env.ECDYSIS_SYSTEMD_TESTS === '0') return 'ECDYSIS_SYSTEMD_TESTS=0';
  if (process.platform !== 'linux') return `systemd needs Linux, this is ${process.platform}`;
  if (process.getuid?.() !== 0) return 'needs root (a mount namespace and cgroups of its own)';
  if (!['/usr/lib/systemd/systemd', '/lib/systemd/systemd'].some((path) => existsSync(path))) return 'systemd is not installed';
  for (const tool of ['unshare', 'nsenter', 'mount', 'systemctl', 'journalctl']) {
    if (!onPath(tool)) return `${tool} is not on PATH`;
  }
  const hierarchies = cgroupHierarchies();
  if (!hierarchies) return 'no cgroup v2 hierarchy is mounted';
  const probe = join(hierarchies.unified, `${prefix}probe-${process.pid}`);
  try {
    mkdirSync(probe);
    rmdirSync(probe);
  } catch (err) {
    return `cannot create a cgroup under ${hierarchies.unified}: ${(err as Error).message}`;
  }
  return undefined;
}

/**
 * Declares an ava test that needs a systemd user manager. AVA cannot skip a test once it runs,
 * so the decision is made here: where a manager cannot start (`systemdUnavailable()`), the test
 * is declared with `test.skip` and the reason in its title, unless ECDYSIS_SYSTEMD_TESTS=require
 * (then it runs and fails with the reason).
 */
export function systemdTest(title: string, implementation: (t: ExecutionContext) => Promise<void>): void {
  const reason = systemdUnavailable();
  if (reason && process.env.ECDYSIS_SYSTEMD_TESTS !== 'require') test.skip(`${title} [skipped: ${reason}]`, implementation);
  else test(title, (t) => oneOfFew(() => implementation(t)));
}

/**
 * At most MANAGERS_AT_ONCE systemd tests of one file run at once: each boots a
 * manager and its journald and drives real services under load, and seven at
 * once beside another test file made a slow 2-core machine start a generation
 * in seconds (a CI run: 3.7 s from spawn to ready).
 */
const MANAGERS_AT_ONCE = 2;
let running = 0;
const waiting: (() => void)[] = [];

async function oneOfFew<T>(body: () => Promise<T>): Promise<T> {
  if (running >= MANAGERS_AT_ONCE) await new Promise<void>((resolve) => waiting.push(resolve));
  else running++;
  try {
    return await body();
  } finally {
    const next = waiting.shift();
    if (next) next();
    else running--;
  }
}

// ---------------------------------------------------------------------------------------------
// Running commands

function run(command: string, args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs: number): Promise<CommandResult> {
  return runCommand(command, args, { env, timeoutMs });
}

function describeResult(what: string, result: CommandResult): string {
  const status = result.signal ? `was killed by ${result.signal}` : `exited with ${result.code}`;
  return `${what} ${status}\nstdout: ${result.stdout.trim()}\nstderr: ${result.stderr.trim()}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function readOr(path: string, fallback = ''): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return fallback;
  }
}

/** Running (not gone, not a zombie). */
function isRunning(pid: number): boolean {
  const stat = readOr(`/proc/${pid}/stat`);
  return stat !== '' && stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
}

// ---------------------------------------------------------------------------------------------
// Cgroups

/** Pids in a cgroup directory and every cgroup below it; [] when the directory is gone. */
export function cgroupPids(dir: string): number[] {
  const pids: number[] = [];
  const walk = (current: string) => {
    for (const line of readOr(join(current, 'cgroup.procs')).split('\n')) if (line) pids.push(Number(line));
    let entries;
    try {
      entries = readdirSync(current, { withFileTypes: true });
    } catch {
      return;
    }
    for (const entry of entries) if (entry.isDirectory()) walk(join(current, entry.name));
  };
  walk(dir);
  return pids;
}

/** SIGKILL every process in the cgroup: `cgroup.kill` (Linux 5.14+), else each pid it lists (v2 only). */
function killCgroup(unifiedDir: string): void {
  if (!existsSync(unifiedDir)) return;
  try {
    writeFileSync(join(unifiedDir, 'cgroup.kill'), '1');
    return;
  } catch {
    // no cgroup.kill on this kernel: one by one; the caller repeats until the cgroup is empty
  }
  for (const pid of cgroupPids(unifiedDir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // exited meanwhile
    }
  }
}

/** Remove a cgroup directory and the cgroups under it, deepest first; errors are left to the caller's check. */
function removeCgroupTree(dir: string): void {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) if (entry.isDirectory()) removeCgroupTree(join(dir, entry.name));
  try {
    rmdirSync(dir);
  } catch {
    // still populated; checked by the caller
  }
}

// ---------------------------------------------------------------------------------------------
// The manager

const live = new Set<UserManager>();
let sequence = 0;
let swept = false;

export class UserManager {
  /** The temporary directory; everything the manager writes on the host's file system is in here. */
  readonly base: string;
  /** HOME of the manager and its services. */
  readonly home: string;
  /** XDG_RUNTIME_DIR: the manager's private bus (rt/systemd/private) and notify socket. */
  readonly runtimeDir: string;
  /** Where `writeUnit` writes: base/home/.config/systemd/user/. */
  readonly unitDir: string;
  /** The manager's cgroup name, the same in every hierarchy: ecdysis-sd-<this pid>-<n>. */
  readonly cgroupName: string;
  /** The manager's cgroup in the v2 hierarchy (a unit's ControlGroup is relative to the v2 root). */
  readonly cgroupDir: string;
  /** pid of `systemd --user` (the launcher script execs into it); 0 before start. */
  pid = 0;
  /** Milliseconds to reach SystemState=running, and to tear down (set when done). */
  readonly timings: { startMs?: number; stopMs?: number } = {};
  readonly #hierarchies: Hierarchies;
  readonly #cgroupDirs: string[];
  readonly #options: UserManagerOptions;
  #launcher?: ChildProcess;
  #exited = false;
  #torndown = false;

  constructor(options: UserManagerOptions = {}) {
    this.#options = options;
    const hierarchies = cgroupHierarchies();
    if (!hierarchies) throw new Error('no cgroup v2 hierarchy is mounted');
    this.#hierarchies = hierarchies;
    this.cgroupName = `${prefix}${process.pid}-${++sequence}`;
    this.base = mkdtempSync(join(tmpdir(), `${this.cgroupName}-`));
    this.home = join(this.base, 'home');
    this.runtimeDir = join(this.base, 'rt');
    this.unitDir = join(this.home, '.config/systemd/user');
    this.cgroupDir = join(hierarchies.unified, this.cgroupName);
    this.#cgroupDirs = [this.cgroupDir, ...(hierarchies.namedSystemd ? [join(hierarchies.namedSystemd, this.cgroupName)] : [])];
  }

  /** The environment of systemctl and journalctl calls: the manager's bus, no pager, no colours. */
  get clientEnv(): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: this.home,
      XDG_RUNTIME_DIR: this.runtimeDir,
      XDG_CONFIG_HOME: join(this.home, '.config'),
      SYSTEMD_PAGER: '',
      SYSTEMD_COLORS: '0',
      LC_ALL: 'C',
    };
  }

  /** Boot the manager and wait for SystemState=running (degraded is accepted, with a log line). */
  async start(log: (message: string) => void = () => {}): Promise<void> {
    const startedAt = performance.now();
    mkdirSync(this.runtimeDir, { mode: 0o700 });
    mkdirSync(this.unitDir, { recursive: true });
    writeFileSync(join(this.base, 'console.log'), '');
    live.add(this);
    installSafetyNet();
    for (const dir of this.#cgroupDirs) mkdirSync(dir);
    const output = openSync(join(this.base, 'launcher.log'), 'a');
    try {
      this.#launcher = spawn('/bin/sh', [launcherScript, this.base, this.#options.logLevel ?? 'info', ...this.#cgroupDirs], {
        detached: true, // its own session: a ^C on the terminal reaches ava only, which tears it down
        stdio: ['ignore', output, output],
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
      });
    } finally {
      closeSync(output);
    }
    this.pid = this.#launcher.pid ?? 0;
    this.#launcher.on('exit', () => (this.#exited = true));
    this.#launcher.on('error', () => (this.#exited = true));
    this.#launcher.unref();
    if (!this.pid) throw new Error(`could not start ${launcherScript}`);

    const timeoutMs = this.#options.startTimeoutMs ?? 10_000;
    const deadline = Date.now() + timeoutMs;
    let last: CommandResult | undefined;
    for (;;) {
      if (this.#exited) throw new Error(`the systemd user manager exited while starting\n${this.diagnostics()}`);
      if (existsSync(join(this.runtimeDir, 'systemd/private'))) {
        last = await this.systemctl('show', '--property=SystemState', '--value', { timeoutMs: 5_000 });
        const state = last.stdout.trim();
        if (state === 'running') break;
        if (state === 'degraded') {
          const failed = await this.systemctl('list-units', '--failed', '--plain', '--no-legend');
          log(`systemd user manager is degraded at start: ${failed.stdout.trim()}`);
          break;
        }
      }
      if (Date.now() > deadline) {
        const answer = last ? describeResult('last "systemctl --user show -p SystemState"', last) : 'its private bus socket never appeared';
        throw new Error(`the systemd user manager did not reach SystemState=running within ${timeoutMs} ms; ${answer}\n${this.diagnostics()}`);
      }
      await sleep(25);
    }
    this.timings.startMs = Math.round(performance.now() - startedAt);
  }

  /**
   * `systemctl --user ARGS...` against this manager; a trailing options object may ask to
   * `check` the exit code. Never throws on a non-zero exit unless asked.
   */
  systemctl(...args: [...string[], SystemctlOptions] | string[]): Promise<CommandResult> {
    const words: string[] = [];
    let options: SystemctlOptions = {};
    for (const arg of args) {
      if (typeof arg === 'string') words.push(arg);
      else options = arg;
    }
    return run('systemctl', ['--user', '--no-pager', ...words], this.clientEnv, options.timeoutMs ?? 90_000).then((result) => {
      if (options.check && result.code !== 0) throw new Error(describeResult(`systemctl --user ${words.join(' ')}`, result));
      return result;
    });
  }

  /** Properties of a unit (`systemctl --user show -p ...`), as strings. */
  async show<P extends string>(unit: string, properties: readonly P[]): Promise<Record<P, string>> {
    const result = await this.systemctl('show', unit, `--property=${properties.join(',')}`, { check: true });
    const values = {} as Record<P, string>;
    for (const line of result.stdout.split('\n')) {
      const equals = line.indexOf('=');
      if (equals > 0) values[line.slice(0, equals) as P] = line.slice(equals + 1);
    }
    return values;
  }

  /** Write a unit file (or drop-in: 'svc.service.d/x.conf') under unitDir, then daemon-reload unless told not to. */
  async writeUnit(name: string, text: string, options: { reload?: boolean } = {}): Promise<string> {
    const path = join(this.unitDir, name);
    mkdirSync(join(path, '..'), { recursive: true });
    writeFileSync(path, text.endsWith('\n') ? text : `${text}\n`);
    if (options.reload ?? true) await this.daemonReload();
    return path;
  }

  daemonReload(): Promise<CommandResult> {
    return this.systemctl('daemon-reload', { check: true });
  }

  /** Variables every unit started from now on gets (`systemctl --user set-environment`). */
  setEnvironment(variables: Record<string, string>): Promise<CommandResult> {
    return this.systemctl('set-environment', ...Object.entries(variables).map(([name, value]) => `${name}=${value}`), { check: true });
  }

  /**
   * Run a command inside the manager's mount namespace (where its /run/systemd and journal are),
   * with `clientEnv`. Works while the manager or its journald runs.
   */
  inNamespace(command: string, args: readonly string[], timeoutMs = 30_000): Promise<CommandResult> {
    const journald = Number(readOr(join(this.base, 'journald.pid'), '0'));
    const target = this.pid && !this.#exited ? this.pid : journald > 0 && isRunning(journald) ? journald : 0;
    if (!target) return Promise.reject(new Error('neither the manager nor its journald runs any more'));
    return run('nsenter', [`--target=${target}`, '--mount', '--', command, ...args], this.clientEnv, timeoutMs);
  }

  /**
   * Journal entries, oldest first: every entry of the manager, or those of one unit: what its
   * processes wrote (their cgroup is the unit's or below it) and what the manager said about it
   * (USER_UNIT=). The manager's cgroup is not a user@.service, so journald records no
   * _SYSTEMD_USER_UNIT and `journalctl --user-unit` finds nothing: this filter replaces it.
   * Asks journald to write out what it received first (`journalctl --sync`).
   */
  async journalEntries(unit?: string): Promise<JournalEntry[]> {
    await this.inNamespace('journalctl', ['--sync']);
    const result = await this.inNamespace('journalctl', ['--no-pager', '--output=json', '--all']);
    if (result.code !== 0) throw new Error(describeResult('journalctl', result));
    const entries: JournalEntry[] = [];
    for (const line of result.stdout.split('\n')) {
      if (!line) continue;
      const raw = JSON.parse(line) as Record<string, string | number[] | null>;
      const entry: Record<string, string | undefined> = {};
      for (const [key, value] of Object.entries(raw)) {
        // journalctl prints a field that is not valid UTF-8 as an array of bytes
        entry[key] = Array.isArray(value) ? Buffer.from(value).toString() : (value ?? undefined);
      }
      entry.MESSAGE ??= '';
      const cgroup = entry._SYSTEMD_CGROUP?.split('/') ?? [];
      if (!unit || entry.USER_UNIT === unit || cgroup.includes(unit)) entries.push(entry as JournalEntry);
    }
    return entries;
  }

  /** The MESSAGE of each `journalEntries(unit)`. */
  async journal(unit?: string): Promise<string[]> {
    return (await this.journalEntries(unit)).map((entry) => entry.MESSAGE);
  }

  /** Resolves with the unit's journal once `predicate` holds for a line; rejects after `timeoutMs`. */
  async waitForJournal(unit: string, predicate: (line: string) => boolean, timeoutMs = 10_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = await this.journal(unit);
      if (lines.some(predicate)) return lines;
      if (Date.now() > deadline) throw new Error(`no matching journal line for ${unit} within ${timeoutMs} ms:\n${lines.join('\n')}`);
      await sleep(100);
    }
  }

  /** Pids in a unit's cgroup and below (`controlGroup` is its ControlGroup property); [] once removed. */
  cgroupPids(controlGroup: string): number[] {
    if (!controlGroup) return [];
    return cgroupPids(join(this.#hierarchies.unified, controlGroup));
  }

  /** Pids in the manager's own cgroup and below: the manager, journald, every unit's processes. */
  processes(): number[] {
    return cgroupPids(this.cgroupDir);
  }

  /** What to read when something went wrong: the launcher's output and the manager's console fallback. */
  diagnostics(): string {
    return [
      `base: ${this.base}, manager pid: ${this.pid}, cgroup: ${this.cgroupName}`,
      `launcher output:\n${readOr(join(this.base, 'launcher.log')).trim() || '(none)'}`,
      `console (journald's output, manager's fallback log):\n${readOr(join(this.base, 'console.log')).trim() || '(none)'}`,
    ].join('\n');
  }

  /**
   * Stop everything: `systemctl --user exit` (when it had started), SIGKILL to the manager if it
   * has not exited within 5 s (at once when it did not start or refused), cgroup.kill of its
   * cgroup, the cgroups and the temporary directory removed. Idempotent.
   * Throws when a cgroup could not be removed (a process would be left behind).
   */
  async teardown(): Promise<void> {
    if (this.#torndown) return;
    this.#torndown = true;
    const startedAt = performance.now();
    try {
      if (this.pid && !this.#exited) {
        // A manager that never reached running, or refuses to exit, is killed at once.
        const exit = this.timings.startMs === undefined ? undefined : await this.systemctl('exit', { timeoutMs: 10_000 }).catch(() => undefined);
        const deadline = Date.now() + (exit?.code === 0 ? 5_000 : 0);
        while (!this.#exited && isRunning(this.pid) && Date.now() < deadline) await sleep(10);
        if (!this.#exited && isRunning(this.pid)) process.kill(this.pid, 'SIGKILL');
      }
      const deadline = Date.now() + 10_000;
      while (cgroupPids(this.cgroupDir).length > 0 && Date.now() < deadline) {
        killCgroup(this.cgroupDir);
        await sleep(10);
      }
      for (const dir of this.#cgroupDirs) removeCgroupTree(dir);
      const left = this.#cgroupDirs.filter((dir) => existsSync(dir));
      if (left.length > 0) {
        throw new Error(`cgroups left behind: ${left.join(', ')} (pids: ${cgroupPids(this.cgroupDir).join(' ') || 'none'})`);
      }
      rmSync(this.base, { recursive: true, force: true });
    } finally {
      live.delete(this);
      if (live.size === 0) removeSafetyNet();
      this.timings.stopMs = Math.round(performance.now() - startedAt);
    }
  }

  /** The synchronous last resort (process exit, SIGTERM from ava's timeout): kill, remove, no waiting for `exit`. */
  teardownSync(): void {
    if (this.#torndown) return;
    this.#torndown = true;
    live.delete(this);
    try {
      if (this.pid && isRunning(this.pid)) process.kill(this.pid, 'SIGKILL');
    } catch {
      // gone
    }
    const deadline = Date.now() + 3_000;
    while (cgroupPids(this.cgroupDir).length > 0 && Date.now() < deadline) {
      killCgroup(this.cgroupDir);
      sleepSync(10);
    }
    for (const dir of this.#cgroupDirs) removeCgroupTree(dir);
    rmSync(this.base, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Safety nets beyond t.teardown

function teardownAllSync(): void {
  for (const manager of [...live]) manager.teardownSync();
}

/** ava ends a worker that timed out with SIGTERM: clean up, then die of it as if unhandled. */
function onSigterm(): void {
  teardownAllSync();
  removeSafetyNet();
  if (process.listenerCount('SIGTERM') === 0) process.kill(process.pid, 'SIGTERM');
}

let safetyNet = false;
function installSafetyNet(): void {
  if (safetyNet) return;
  safetyNet = true;
  process.on('exit', teardownAllSync);
  process.on('SIGTERM', onSigterm);
}

function removeSafetyNet(): void {
  if (!safetyNet) return;
  safetyNet = false;
  process.off('exit', teardownAllSync);
  process.off('SIGTERM', onSigterm);
}

/**
 * Cgroups and directories named ecdysis-sd-<pid>-<n> whose owner pid no longer exists: left by a
 * test worker that was SIGKILLed. Everything in those cgroups was started by this helper.
 */
function sweepAbandoned(hierarchies: Hierarchies): void {
  const owner = (name: string) => Number(new RegExp(`^${prefix}(\\d+)-\\d+`).exec(name)?.[1] ?? 0);
  const abandoned = (name: string) => {
    const pid = owner(name);
    return pid > 0 && pid !== process.pid && !existsSync(`/proc/${pid}`);
  };
  for (const name of readdirSync(hierarchies.unified)) {
    if (!abandoned(name)) continue;
    const dir = join(hierarchies.unified, name);
    const deadline = Date.now() + 3_000;
    while (cgroupPids(dir).length > 0 && Date.now() < deadline) {
      killCgroup(dir);
      sleepSync(10);
    }
    removeCgroupTree(dir);
    if (hierarchies.namedSystemd) removeCgroupTree(join(hierarchies.namedSystemd, name));
  }
  for (const name of readdirSync(tmpdir())) {
    const path = join(tmpdir(), name);
    if (abandoned(name) && statSync(path).isDirectory()) rmSync(path, { recursive: true, force: true });
  }
}

/**
 * A fresh systemd user manager for this test, torn down with it (see the module comment).
 * Rejects with the reason where a manager cannot start (declare such tests with `systemdTest`
 * to skip them there), or with the launcher's output when it did not reach SystemState=running.
 */
export async function startUserManager(t: ExecutionContext, options: UserManagerOptions = {}): Promise<UserManager> {
  const reason = systemdUnavailable();
  if (reason) throw new Error(`a systemd user manager cannot start here: ${reason}`);
  const hierarchies = cgroupHierarchies()!;
  if (!swept) {
    swept = true;
    sweepAbandoned(hierarchies);
  }
  const manager = new UserManager(options);
  // Registered before starting, so that a manager that fails to start is cleaned up too.
  t.teardown(async () => {
    if (!t.passed && manager.pid) {
      const tail = await manager
        .journalEntries()
        .then((entries) =>
          entries
            .filter((entry) => !entry.MESSAGE.startsWith('Received client request to sync journal'))
            .map((entry) => `${entry.SYSLOG_IDENTIFIER ?? '?'}[${entry._PID ?? '?'}]: ${entry.MESSAGE}`),
        )
        .catch((err: Error) => [`(journal unavailable: ${err.message})`]);
      t.log(`${manager.diagnostics()}\njournal (last 60 lines):\n${tail.slice(-60).join('\n')}`);
    }
    await manager.teardown();
    t.log(`systemd user manager ${manager.cgroupName}: running after ${manager.timings.startMs ?? '-'} ms, torn down in ${manager.timings.stopMs} ms`);
  });
  await manager.start((message) => t.log(message));
  return manager;
}
