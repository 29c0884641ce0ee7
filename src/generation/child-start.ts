/**
 * Starting a child process without stalling the serving loop. Node's
 * child_process.spawn (libuv's uv_spawn) forks on Linux: the kernel copies the
 * page tables of the whole heap and the loop waits until the child has exec'd,
 * which grows with the heap (bench/src/spawn-stall.ts: about 1 ms per 100 MiB).
 * The addon's spawnProcess uses posix_spawn, which glibc implements with
 * clone(CLONE_VM | CLONE_VFORK): nothing is copied. That call still waits for
 * the child's exec (on a busy machine, until the child gets a core), so it runs
 * on a thread of libuv's pool (spawnProcessAsync): the child has a pid a few
 * turns later ('spawn', or 'error' if it could not start). Its child is watched
 * and reaped through a pidfd (ProcessWatch), never by Node.
 *
 * Both paths give the same child: fds 0-2 inherited, fd 3 one end of a Unix
 * stream socketpair (the control channel, a net.Socket here), then `fds` from
 * fd 4 on, nothing else; the same argv, environment and working directory;
 * signals unblocked and at their defaults. child_process is used where the
 * native start cannot do the same (no pidfd before Linux 5.3, another working
 * directory without posix_spawn_file_actions_addchdir_np before glibc 2.29, a
 * command without a '/' that needs a PATH search), or with ECDYSIS_SPAWN=node.
 * Generation 0 warms the JavaScript side of that start up once, in create()
 * (warmSuccessorStart).
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import { constants } from 'node:os';
import { childProcess } from '../internal/builtins.ts';
import { closeQuietly, native, type ProcessWatch } from '../internal/native.ts';

/** What the parent uses of its child: a ChildProcess, or a NativeChild with the same surface. */
export interface ChildHandle {
  readonly pid?: number | undefined;
  /** A NativeChild whose start runs on another thread: 'spawn' or 'error' follows. */
  readonly spawning?: boolean;
  readonly exitCode: number | null;
  readonly signalCode: NodeJS.Signals | null;
  kill(signal: NodeJS.Signals): boolean;
  unref(): void;
  on(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  once(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  once(event: 'spawn', listener: () => void): this;
  off(event: 'exit', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  off(event: 'error', listener: (err: Error) => void): this;
  off(event: 'spawn', listener: () => void): this;
}

export interface StartedChild {
  child: ChildHandle;
  /** This end of the control channel (the child's fd 3). */
  control: Socket | null;
}

export interface ChildCommand {
  file: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Become the child's fds 4, 5, ... (duplicated: the caller keeps its own). */
  fds: number[];
}

let signalNames: Map<number, NodeJS.Signals> | undefined;

/** A signal's name from its number, as ChildProcess#signalCode has it (the table made at the first exit by a signal). */
function signalName(signal: number): NodeJS.Signals | null {
  signalNames ??= new Map(Object.entries(constants.signals).map(([name, number]) => [number, name as NodeJS.Signals]));
  return signalNames.get(signal) ?? null;
}

/**
 * A child started by the addon, shaped like the parts of a ChildProcess the
 * library uses. Its start runs on a thread of the addon (`spawning` until
 * then): 'spawn' follows once it has a pid, or 'error' (no pid) if it could
 * not start. A kill asked for meanwhile is sent as soon as it has one.
 */
export class NativeChild extends EventEmitter implements ChildHandle {
  pid: number | undefined;
  spawning = true;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  #watch: ProcessWatch | undefined;
  #killWith: number | undefined;
  #unref = false;

  /**
   * The start under way succeeded: watch the child (which reaps it). Throws
   * when it cannot be watched, after killing it: it must not run unwatched
   * (reaped when this process exits).
   */
  started(pid: number, pidfd: number): void {
    try {
      this.#watch = this.#newWatch(pid, pidfd);
    } catch (err) {
      try {
        native().pidfdSendSignal(pidfd, constants.signals.SIGKILL);
      } catch {
        // gone already
      }
      closeQuietly(pidfd);
      throw err;
    }
    this.pid = pid;
    this.spawning = false;
    if (this.#unref) this.#watch.unref();
    if (this.#killWith !== undefined) this.#watch.kill(this.#killWith);
    this.emit('spawn');
  }

  #newWatch(pid: number, pidfd: number): ProcessWatch {
    return new (native().ProcessWatch)(pidfd, pid, {
      onExit: (code, signal) => {
        this.exitCode = code;
        this.signalCode = signal === null ? null : signalName(signal);
        // Reaped elsewhere (both null): it has exited, how is unknown; say killed.
        if (code === null && signal === null) this.signalCode = 'SIGKILL';
        this.emit('exit', this.exitCode, this.signalCode);
      },
    });
  }

  /** The start under way failed: no child. */
  failed(err: Error): void {
    this.spawning = false;
    // Nobody waits any more (the start was abandoned meanwhile): nothing to say.
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    const number = constants.signals[signal];
    if (number === undefined) throw new TypeError(`unknown signal ${signal}`);
    if (this.#watch) return this.#watch.kill(number);
    if (!this.spawning) return false;
    // SIGKILL wins over whatever was asked before.
    if (this.#killWith !== constants.signals.SIGKILL) this.#killWith = number;
    return true;
  }

  unref(): void {
    this.#unref = true;
    this.#watch?.unref();
  }

  ref(): void {
    this.#unref = false;
    this.#watch?.ref();
  }
}

let features: { chdir: boolean; pidfd: boolean } | undefined;

/** Whether the addon can start this command as child_process would. */
export function nativeStartFits(command: Pick<ChildCommand, 'file' | 'cwd'>): boolean {
  if (process.env.ECDYSIS_SPAWN === 'node') return false;
  if (!command.file.includes('/')) return false;
  // An addon built before spawnProcess existed (an old prebuild) has no spawnFeatures.
  features ??= typeof native().spawnFeatures === 'function' ? native().spawnFeatures() : { chdir: false, pidfd: false };
  return features.pidfd && (features.chdir || command.cwd === process.cwd());
}

/**
 * Start the child. Throws when the start cannot even begin (bad arguments, no
 * fds left); a child that could not be started (a system error: ENOENT,
 * EACCES...) is the child's 'error' event, with no pid, from either path.
 */
export function startChild(command: ChildCommand): StartedChild {
  if (!nativeStartFits(command)) {
    const child = childProcess().spawn(command.file, command.args, {
      cwd: command.cwd,
      env: command.env,
      stdio: ['inherit', 'inherit', 'inherit', 'pipe', ...command.fds],
      windowsHide: true,
    });
    return { child, control: (child.stdio[3] as Socket | null) ?? null };
  }
  const env: string[] = [];
  for (const [name, value] of Object.entries(command.env)) if (value !== undefined) env.push(`${name}=${value}`);
  const [mine, theirs] = native().socketPair('stream');
  const child = new NativeChild();
  const args: [string, string[], string[], string | null, number[]] = [command.file, [command.file, ...command.args], env, command.cwd === process.cwd() ? null : command.cwd, [0, 1, 2, theirs, ...command.fds]];
  try {
    const spawnAsync = native().spawnProcessAsync;
    if (typeof spawnAsync === 'function') {
      // The addon holds its own copies of the fds from here on.
      spawnAsync(...args, (err, started) => {
        if (err || !started) return child.failed(err ?? new Error('no child'));
        try {
          child.started(started.pid, started.pidfd);
        } catch (error) {
          child.failed(error as Error);
        }
      });
    } else {
      // An addon built before spawnProcessAsync existed (an old prebuild): the start waits for the exec here.
      const started = native().spawnProcess(...args);
      child.started(started.pid, started.pidfd);
    }
  } catch (err) {
    closeQuietly(mine);
    throw err;
  } finally {
    closeQuietly(theirs);
  }
  let control: Socket;
  try {
    control = new Socket({ fd: mine, readable: true, writable: true });
  } catch (err) {
    closeQuietly(mine);
    child.kill('SIGKILL');
    throw err;
  }
  return { child, control };
}

/**
 * Generation 0, during create(): creates once a net.Socket on a socketpair's
 * fd, as each upgrade does for its control channel, and destroys it (libuv
 * closes a stream's fd inside uv_close: every fd is closed before this
 * returns). A later generation did the same as a child while it started;
 * generation 0 did it first in its first upgrade's trigger turn, on the
 * serving loop: 0.8 to 4.3 ms measured there, 0.12 to 0.19 ms once warm.
 * Only that: warming the first write and a hand-over channel as well saved
 * under 1 ms more there and cost 0.42 MiB more of generation 0's idle RSS
 * (bench/README.md, "Stall"); the Socket alone costs 0.12 MiB.
 */
export function warmSuccessorStart(): void {
  let fds: [number, number] | undefined;
  try {
    fds = native().socketPair('stream');
    const [mine, theirs] = fds;
    const control = new Socket({ fd: mine, readable: true, writable: true });
    fds = [-1, theirs]; // the Socket's now
    control.on('error', () => {});
    control.destroy();
  } catch {
    // Only a warm-up: an upgrade does all of it again and reports what fails.
  } finally {
    for (const fd of fds ?? []) if (fd >= 0) closeQuietly(fd);
  }
}
