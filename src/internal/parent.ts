/**
 * The parent side of an upgrade: start the next generation with the registry's
 * sockets, send it the hello frame, and wait for ready, an error, its exit, or
 * the deadline (then kill it). Never calls back into Ecdysis: it returns a
 * promise and leaves the child either ready or dead and reaped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { EcdysisError } from '../errors.ts';
import {
  CONTROL_FD,
  FrameDecoder,
  HANDOFF_ENV,
  COMMIT_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  encodeFrame,
  encodeHandoff,
  validateChildFrame,
  type SocketEntry,
} from './protocol.ts';

/** How the next generation is started. */
export interface SpawnCommand {
  file: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
}

export interface SpawnRequest {
  command: SpawnCommand;
  generation: number;
  fds: number[];
  sockets: SocketEntry[];
  timeoutMs: number;
  /** Called as soon as the child has a pid. */
  onSpawn?: (pid: number) => void;
}

/** A child that reported ready. The parent keeps `control` open until it exits. */
export interface ReadyChild {
  pid: number;
  control: Socket;
}

/** How long a child that closed the control channel has to exit before it is killed. */
const CHANNEL_CLOSED_GRACE_MS = 500;

/** Variables that must never leak into the next generation. */
const NEVER_PASSED = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', HANDOFF_ENV];

export function defaultCommand(): SpawnCommand {
  return {
    file: process.execPath,
    args: [...process.execArgv, ...process.argv.slice(1)],
    cwd: process.cwd(),
    env: process.env,
  };
}

export function childEnvironment(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(env)) {
    if (value !== undefined && !NEVER_PASSED.includes(name)) out[name] = value;
  }
  out[HANDOFF_ENV] = encodeHandoff(CONTROL_FD);
  return out;
}

/** An in-flight start of the next generation; `abort()` kills it. */
export interface PendingChild {
  pid: number | undefined;
  ready: Promise<ReadyChild>;
  abort(reason: EcdysisError): void;
}

export function spawnGeneration(request: SpawnRequest): PendingChild {
  let child: ChildProcess;
  try {
    child = spawn(request.command.file, request.command.args, {
      cwd: request.command.cwd,
      env: childEnvironment(request.command.env),
      stdio: ['inherit', 'inherit', 'inherit', 'pipe', ...request.fds],
      windowsHide: true,
    });
  } catch (err) {
    const error = spawnFailed(request.command, err);
    return { pid: undefined, ready: Promise.reject(error), abort: () => {} };
  }

  let abortWith: (reason: EcdysisError) => void = () => {};
  const ready = new Promise<ReadyChild>((resolve, reject) => {
    const control = child.stdio[CONTROL_FD] as Socket | null;
    const decoder = new FrameDecoder();
    let settled = false;
    let failure: EcdysisError | undefined;
    let timer: NodeJS.Timeout | undefined;
    let eofTimer: NodeJS.Timeout | undefined;

    const cleanup = () => {
      clearTimeout(timer);
      clearTimeout(eofTimer);
      control?.off('data', onData);
      control?.off('end', onEnd);
      child.off('exit', onExit);
      child.off('error', onError);
    };
    // Fail: make sure the child is dead, wait until it is reaped, then reject.
    const fail = (error: EcdysisError) => {
      if (failure || settled) return; // settled: ready already, abort comes too late
      failure = error;
      clearTimeout(timer);
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        child.kill('SIGKILL');
      } else {
        finish();
      }
    };
    const finish = () => {
      if (settled) return;
      settled = true;
      cleanup();
      control?.destroy();
      reject(failure);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (failure) return finish();
      failure = new EcdysisError(
        'ERR_ECDYSIS_CHILD_EXITED',
        `generation ${request.generation} (pid ${child.pid}) exited before it was ready ` +
          `(${signal ? `signal ${signal}` : `code ${code}`})`,
        { exitCode: code, signal, pid: child.pid },
      );
      finish();
    };
    const onError = (err: Error) => {
      // 'error' without a pid means the spawn itself failed; no 'exit' follows.
      if (child.pid === undefined) {
        failure ??= spawnFailed(request.command, err);
        finish();
      } else {
        fail(new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', `generation ${request.generation}: ${err.message}`, { cause: err, pid: child.pid }));
      }
    };
    const onData = (chunk: Buffer) => {
      if (failure) return;
      let frames;
      try {
        frames = decoder.push(chunk).map(validateChildFrame);
      } catch (err) {
        return fail(err as EcdysisError);
      }
      for (const frame of frames) {
        if (frame.type === 'error') {
          return fail(
            new EcdysisError(
              'ERR_ECDYSIS_CHILD_ERROR',
              `generation ${request.generation} (pid ${child.pid}) failed to start: ${frame.code}: ${frame.message}`,
              { pid: child.pid },
            ),
          );
        }
        settled = true;
        cleanup();
        // The point of no return: the child starts accepting when it reads this
        // (a version-1 child accepts without it).
        if (frame.protocol >= COMMIT_PROTOCOL_VERSION) control!.write(encodeFrame({ type: 'commit', protocol: frame.protocol }));
        // From now on the child is on its own: neither it nor the channel may keep
        // this (exiting) process alive. The channel stays open until we exit.
        control!.unref();
        child.unref();
        return resolve({ pid: child.pid!, control: control! });
      }
    };

    // The child closed its end without a word. If it is exiting, 'exit' says how;
    // if it keeps running without a channel it can never report ready: fail now,
    // not at the timeout.
    const onEnd = () => {
      eofTimer = setTimeout(() => {
        fail(
          new EcdysisError(
            'ERR_ECDYSIS_PROTOCOL',
            `generation ${request.generation} (pid ${child.pid}) closed the control channel before it was ready; it was killed`,
            { pid: child.pid },
          ),
        );
      }, CHANNEL_CLOSED_GRACE_MS);
    };

    abortWith = fail;
    child.on('exit', onExit);
    child.on('error', onError);
    if (child.pid === undefined) return; // 'error' follows on the next tick
    request.onSpawn?.(child.pid);
    if (!control) return fail(new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', 'no control channel to the child'));
    control.on('data', onData);
    control.on('end', onEnd);
    control.on('error', () => {}); // a crash shows up as 'exit'
    timer = setTimeout(() => {
      fail(
        new EcdysisError(
          'ERR_ECDYSIS_CHILD_TIMEOUT',
          `generation ${request.generation} (pid ${child.pid}) was not ready within ${request.timeoutMs} ms and was killed`,
          { pid: child.pid, signal: 'SIGKILL' },
        ),
      );
    }, request.timeoutMs);
    try {
      control.write(
        encodeFrame({
          type: 'hello',
          protocol: PROTOCOL_VERSION,
          parentPid: process.pid,
          generation: request.generation,
          sockets: request.sockets,
        }),
      );
    } catch (err) {
      fail(err as EcdysisError);
    }
  });
  return { pid: child.pid, ready, abort: (reason) => abortWith(reason) };
}

function spawnFailed(command: SpawnCommand, err: unknown): EcdysisError {
  return new EcdysisError(
    'ERR_ECDYSIS_SPAWN_FAILED',
    `could not start "${command.file}" in ${command.cwd}: ${(err as Error).message}`,
    { cause: err },
  );
}
