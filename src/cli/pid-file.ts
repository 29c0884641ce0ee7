/**
 * The `--pid-file` mode: a number read from a file, then a signal. The CLI is
 * often root (a deploy script), and the file is written by the service's user,
 * or left behind by a process that crashed (its pid since reused). So the
 * number is believed only when it names the service:
 * - the file is opened without following a symlink, must be a regular file of
 *   at most a few bytes, and name a pid from 2 to pid_max (0 would be the CLI's
 *   own process group, 1 init);
 * - a process in the CLI's own cgroup (not the root one) is the service: that is
 *   how systemd runs ExecReload= and ExecStop= (and `kubectl exec` in a pod);
 * - otherwise, as root, the file and its directories must be root's and writable
 *   by nobody else (systemd's rule for PIDFile=: a file another user could have
 *   written is followed only into the unit's own cgroup);
 * - and the process must run as the file's owner (the generation that wrote it)
 *   and have the ecdysis addon loaded.
 * The signal goes through a pidfd opened before these checks: if the process
 * checked is gone by the time of the signal, its successor under that pid gets
 * nothing (ESRCH).
 */
import { closeSync, constants, fstatSync, openSync, readFileSync, readSync, readlinkSync } from 'node:fs';
import { constants as os } from 'node:os';
import { native, type NativeSystemError } from '../internal/native.ts';
import { alive } from './proc.ts';
import { pathProblem } from './trust.ts';

/** The file cannot be read, holds no acceptable pid, or names a process that is not the service. */
export class PidFileError extends Error {
  override name = 'PidFileError';
}

export interface PidFile {
  pid: number;
  /** The file's owner: the service's uid when the service wrote it. */
  owner: number;
}

/** A pid, a newline, and some room: anything longer is not a PID file. */
const MAX_BYTES = 32;
/** The most pid_max can be (PID_MAX_LIMIT on 64-bit Linux). */
const PID_MAX_LIMIT = 4_194_304;

/**
 * Read `file` (never through a symlink at its last component).
 *
 * @throws {PidFileError} unreadable, a symlink, not a regular file, no pid, or a
 * pid <= 1 or above pid_max.
 */
export function readPidFile(file: string): PidFile {
  let fd: number;
  try {
    // O_NONBLOCK: a FIFO planted there must not hang the CLI (it is refused below).
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new PidFileError(code === 'ELOOP' ? `${file} is a symbolic link: a PID file is never read through one` : `cannot read ${file}: ${code}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PidFileError(`${file} is not a regular file`);
    const buffer = Buffer.alloc(MAX_BYTES + 1);
    const length = readSync(fd, buffer, 0, buffer.length, 0);
    const text = buffer.toString('utf8', 0, length).trim();
    if (length > MAX_BYTES || !/^\d{1,10}$/.test(text)) throw new PidFileError(`${file} does not hold a pid`);
    const pid = Number(text);
    if (pid <= 1) throw new PidFileError(`${file} names pid ${pid}, which is never signalled (0 is this command's own process group, 1 is init)`);
    const max = pidMax();
    if (pid > max) throw new PidFileError(`${file} names pid ${pid}, above pid_max (${max})`);
    return { pid, owner: st.uid };
  } finally {
    closeSync(fd);
  }
}

function pidMax(): number {
  try {
    const value = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
    return Number.isInteger(value) && value > 1 ? value : PID_MAX_LIMIT;
  } catch {
    return PID_MAX_LIMIT;
  }
}

/** The unified cgroup (or systemd's v1 hierarchy) of a process, or undefined. */
function cgroupOf(pid: number | 'self'): string | undefined {
  try {
    const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
    const line = lines.find((l) => l.startsWith('0::')) ?? lines.find((l) => l.includes(':name=systemd:'));
    return line?.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
  } catch {
    return undefined;
  }
}

/** The process's real and effective uids, from /proc/PID/status. */
function uidsOf(pid: number): number[] | undefined {
  try {
    const line = readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
    return line?.split(/\s+/).slice(1, 3).map(Number);
  } catch {
    return undefined;
  }
}

/** The process has the ecdysis addon mapped (a build from source or a prebuild, replaced on disk or not). */
function loadsEcdysis(pid: number): boolean {
  try {
    return /\/ecdysis(\.[\w-]+)*\.node( \(deleted\))?$/m.test(readFileSync(`/proc/${pid}/maps`, 'utf8'));
  } catch {
    return false;
  }
}

function executableOf(pid: number): string {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return '?';
  }
}

/** Why `pid`, read from `file`, is not to be signalled; undefined when it is the service. */
export function targetProblem(file: string, { pid, owner }: PidFile): string | undefined {
  const ours = cgroupOf('self');
  if (ours !== undefined && ours !== '/' && cgroupOf(pid) === ours) return undefined;
  if ((process.geteuid?.() ?? 0) === 0) {
    const problem = pathProblem(file, 0);
    if (problem) {
      return `${problem}: as root, a PID file another user could have written is followed only to a process of this command's own service (its cgroup, as for ExecReload=); run this command as the service's user, or use a control socket`;
    }
  }
  const uids = uidsOf(pid);
  if (uids === undefined) return `pid ${pid} (named by ${file}) is not running`;
  if (uids.some((uid) => uid !== owner)) return `pid ${pid} (named by ${file}) runs as uid ${uids[0]}, not as the file's owner (uid ${owner}): not the service that wrote it (a stale PID file?)`;
  if (!loadsEcdysis(pid)) return `pid ${pid} (named by ${file}, ${executableOf(pid)}) has not loaded ecdysis: not the service (a stale PID file?)`;
  return undefined;
}

/** A process, held by a pidfd (when the kernel has them) from before it was checked. */
export class Target {
  readonly pid: number;
  #pidfd: number | undefined;

  constructor(pid: number) {
    this.pid = pid;
    try {
      this.#pidfd = native().pidfdOpen(pid);
    } catch (err) {
      const code = (err as NativeSystemError).code;
      if (code === 'ESRCH') throw new PidFileError(`pid ${pid} is not running`);
      if (code !== 'ENOSYS') throw new PidFileError(`cannot open pid ${pid}: ${code}`);
      // Linux before 5.3: a plain kill() after the checks, with its small race.
    }
  }

  /**
   * Send `name` to this process, unless it is gone (whoever has its pid now).
   *
   * @throws {PidFileError} gone, or not ours to signal; TypeError for an unknown signal name.
   */
  signal(name: string): void {
    const number = (os.signals as Record<string, number | undefined>)[name];
    if (number === undefined) throw new TypeError(`unknown signal ${name}`);
    try {
      if (this.#pidfd === undefined) process.kill(this.pid, number);
      else native().pidfdSendSignal(this.#pidfd, number);
    } catch (err) {
      throw new PidFileError(`cannot signal pid ${this.pid}: ${(err as NodeJS.ErrnoException).code}`);
    }
  }

  /** Exited: the pidfd's process is gone, or its pid is a zombie nobody reaped yet. */
  exited(): boolean {
    if (!alive(this.pid)) return true;
    if (this.#pidfd === undefined) return false;
    try {
      native().pidfdSendSignal(this.#pidfd, 0);
      return false;
    } catch {
      return true;
    }
  }

  close(): void {
    if (this.#pidfd !== undefined) native().close(this.#pidfd);
    this.#pidfd = undefined;
  }
}
