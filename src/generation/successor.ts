/**
 * The parent side of an upgrade: start the next generation with the registry's
 * sockets, send it the hello frame, and wait for ready, an error, its exit, or
 * the deadline (then kill it). Once the child is ready, ask the caller
 * (synchronously, so the decision and the state change are one step) whether to
 * commit; after commit, watch the successor until it exits and say whether it
 * released this generation first. Never calls back into Ecdysis otherwise: it
 * returns promises and leaves the child either committed or dead and reaped.
 */
import { startChild, type ChildHandle } from './child-start.ts';
import type { Socket } from 'node:net';
import { EcdysisError } from '../errors.ts';
import { HandoffChannel } from '../wire/handoff-channel.ts';
import { closeQuietly, native } from '../internal/native.ts';
import type { DrainingAncestor } from './retire.ts';
import type { SocketRecord } from '../wire/sockets.ts';
import { watch, type Successor } from './successor-watch.ts';

export type { Successor, SuccessorEnd } from './successor-watch.ts';
import {
  CONTROL_FD,
  FrameDecoder,
  UPGRADE_ENV,
  HANDOFF_FD,
  ANNOUNCED_PROTOCOL_VERSION,
  COMMIT_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  WORKER_HANDOFF_PROTOCOL_VERSION,
  encodeFrame,
  encodeUpgradeEnv,
  validateChildFrame,
  type ChildFrame,
  type MetricsSnapshot,
  type ReadyFrame,
} from '../wire/protocol.ts';
import { trySetNice } from '../internal/priority.ts';
import { nextGenerationEnvironment } from '../systemd/notify.ts';

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
  sockets: SocketRecord[];
  timeoutMs: number;
  /** Called as soon as the child has a pid. */
  onSpawn?: (pid: number) => void;
  /** A hand-over follows on the hand-over channel (onHandoff handlers exist). */
  handoff: boolean;
  /** The older generations still draining, for the child's own upgrades (see retire.ts). */
  draining?: DrainingAncestor[];
  /**
   * Awaited when the child reports ready, before `commit` is called (making room
   * among the draining generations). The child waits; a failure meanwhile still
   * fails the start.
   */
  beforeCommit?: () => Promise<void>;
  /** Called when the child reports ready, before beforeCommit (a worker group counts its ready workers). */
  onReady?: () => void;
  /** The child is worker `index` of `count` of this process's group (hello's `worker`), not the next generation. */
  worker?: { index: number; count: number };
  /**
   * A worker: its end of the channel its predecessor's hand-over comes on
   * (hello's `peerHandoffFd`, version 8). spawnSuccessor owns it from the call
   * on (it closes it once the child has its copy, or on failure), and a child
   * that answers in an older version fails to start.
   */
  peer?: number;
  /**
   * niceWhileStarting: the child's nice value from its spawn until it is ready,
   * and the one it is given back at the commit (this process's own).
   */
  nice?: { starting: number; ready: number };
  /** The service's counters, for the child to go on from (hello's `metrics`). */
  metrics?: MetricsSnapshot;
  /** When the upgrade was asked for (Date.now()). */
  requestedAt?: number;
  /**
   * Called synchronously when the child reports ready, before commit is sent:
   * undefined commits (the caller has already stepped down); an error refuses
   * (the child is killed and `ready` rejects with it).
   */
  commit: (child: Successor, ready: ReadyFrame) => EcdysisError | undefined;
}

/** How long a child that closed the control channel has to exit before it is killed. */
const CHANNEL_CLOSED_GRACE_MS = 500;

/**
 * Variables that must never leak into the next generation. WATCHDOG_PID names
 * the main process: without it, the watchdog is the next generation's once it
 * is main (WATCHDOG_USEC stays).
 */
const NEVER_PASSED = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES', 'WATCHDOG_PID', UPGRADE_ENV];

/** What only the service's main process may use. */
const MANAGER_VARIABLES = ['NOTIFY_SOCKET', 'WATCHDOG_USEC'];

export function defaultCommand(): SpawnCommand {
  return {
    file: process.execPath,
    args: [...process.execArgv, ...process.argv.slice(1)],
    cwd: process.cwd(),
    env: process.env,
  };
}

/** `worker`: a worker of this process's group, which never speaks to the service manager. */
export function childEnvironment(env: NodeJS.ProcessEnv, worker = false): NodeJS.ProcessEnv {
  // The service manager's variables, which create() took out of process.env; the command's own win.
  const out: NodeJS.ProcessEnv = worker ? {} : nextGenerationEnvironment();
  for (const [name, value] of Object.entries(env)) {
    if (value !== undefined && !NEVER_PASSED.includes(name) && !(worker && MANAGER_VARIABLES.includes(name))) out[name] = value;
  }
  out[UPGRADE_ENV] = encodeUpgradeEnv(CONTROL_FD);
  return out;
}

/** An in-flight start of the next generation; `abort()` kills it. */
export interface PendingSuccessor {
  /** Once it started (the start may run on a thread of the addon: see `spawned`). */
  readonly pid: number | undefined;
  /** Resolves with its pid once it started, or with undefined when it never did. */
  spawned: Promise<number | undefined>;
  ready: Promise<Successor>;
  /**
   * Resolves with the child's protocol version once it has read hello and takes
   * a hand-over (version 4 on), or with 0 when it never will (an older child,
   * or a child that failed).
   */
  accepted: Promise<number>;
  /** This end of the hand-over channel (closed if the child fails). */
  channel: HandoffChannel | undefined;
  abort(reason: EcdysisError): void;
}

export function spawnSuccessor(request: SpawnRequest): PendingSuccessor {
  const label = request.worker ? `worker ${request.worker.index} of generation ${request.generation}` : `generation ${request.generation}`;
  let child: ChildHandle;
  let startedControl: Socket | null;
  let pair: [number, number];
  const closePeer = () => {
    if (request.peer !== undefined) closeQuietly(request.peer);
  };
  try {
    pair = native().socketPair('seqpacket');
  } catch (err) {
    closePeer();
    return notStarted(request.command, err);
  }
  try {
    ({ child, control: startedControl } = startChild({
      file: request.command.file,
      args: request.command.args,
      cwd: request.command.cwd,
      env: childEnvironment(request.command.env, request.worker !== undefined),
      // fd 3: control channel; fd 4: the hand-over channel (HANDOFF_FD); then the sockets.
      fds: [pair[1], ...request.fds, ...(request.peer === undefined ? [] : [request.peer])],
    }));
  } catch (err) {
    closeQuietly(pair[0]);
    closeQuietly(pair[1]);
    closePeer();
    return notStarted(request.command, err);
  }
  // The child (or the start under way) has its own copy now.
  closeQuietly(pair[1]);
  closePeer();
  const channel = new HandoffChannel(pair[0]);
  let accept!: (protocol: number) => void;
  const accepted = new Promise<number>((resolve) => (accept = resolve));
  let spawn!: (pid: number | undefined) => void;
  const spawned = new Promise<number | undefined>((resolve) => (spawn = resolve));

  let abortWith: (reason: EcdysisError) => void = () => {};
  const ready = new Promise<Successor>((resolve, reject) => {
    const control = startedControl;
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
      child.off('spawn', begin);
    };
    // Fail: make sure the child is dead, wait until it is reaped, then reject. A start still waiting
    // for a thread of libuv's pool (the application's work may hold them) is not waited for: its child
    // is killed as soon as it has a pid (without a hello it touched nothing), and reaped by its watch.
    const fail = (error: EcdysisError) => {
      if (failure || settled) return; // settled: ready already, abort comes too late
      failure = error;
      clearTimeout(timer);
      const running = child.exitCode === null && child.signalCode === null && child.pid !== undefined;
      if (running || child.spawning) child.kill('SIGKILL');
      if (!running) finish(); // 'exit' finishes a running one
    };
    const finish = () => {
      if (settled) return;
      settled = true;
      cleanup();
      control?.destroy();
      channel.close();
      accept(0);
      spawn(child.pid);
      reject(failure);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (failure) return finish();
      failure = new EcdysisError(
        'ERR_ECDYSIS_CHILD_EXITED',
        `${label} (pid ${child.pid}) exited before it was ready ` +
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
        fail(new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', `${label}: ${err.message}`, { cause: err, pid: child.pid }));
      }
    };
    /** True once the child said ready and beforeCommit runs: later frames wait in `pending`. */
    let awaitingCommit = false;
    let pending: ChildFrame[] = [];
    const onData = (chunk: Buffer) => {
      if (failure) return;
      let frames;
      try {
        frames = decoder.push(chunk).map(validateChildFrame);
      } catch (err) {
        return fail(err as EcdysisError);
      }
      if (awaitingCommit) {
        pending.push(...frames);
        return;
      }
      for (const [index, frame] of frames.entries()) {
        if (frame.type === 'error') {
          // A new primary whose worker failed says so with the group's own code.
          const code = frame.code === 'ERR_ECDYSIS_WORKER_FAILED' ? frame.code : 'ERR_ECDYSIS_CHILD_ERROR';
          return fail(new EcdysisError(code, `${label} (pid ${child.pid}) failed to start: ${frame.code}: ${frame.message}`, { pid: child.pid }));
        }
        if (frame.type === 'accepted') {
          accept(frame.protocol);
          continue;
        }
        if (frame.type !== 'ready') continue; // 'released' before commit means nothing yet
        accept(0); // a child that never said accepted takes no hand-over
        if (request.peer !== undefined && frame.protocol < WORKER_HANDOFF_PROTOCOL_VERSION) {
          // It never read its predecessor's hand-over: committing would lose what was sent.
          return fail(new EcdysisError('ERR_ECDYSIS_PROTOCOL_VERSION', `${label} (pid ${child.pid}) speaks protocol version ${frame.protocol}: it cannot take its predecessor's hand-over (version ${WORKER_HANDOFF_PROTOCOL_VERSION} on)`, { pid: child.pid }));
        }
        request.onReady?.();
        const later = frames.slice(index + 1);
        if (!request.beforeCommit) return commit(frame, later);
        // Frames the child sends meanwhile are kept for after commit.
        awaitingCommit = true;
        pending = later;
        void request.beforeCommit().then(
          () => commit(frame, pending),
          (err: unknown) => fail(err instanceof EcdysisError ? err : new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', String(err), { cause: err })),
        );
        return;
      }
    };
    const commit = (frame: ReadyFrame, later: ChildFrame[]) => {
      if (failure || settled) return;
      const committed = watch(child, control!, frame.protocol, decoder);
      const refusal = request.commit(committed, frame);
      if (refusal) {
        committed.forget();
        return fail(refusal);
      }
      settled = true;
      cleanup();
      // Its priority back before it learns it serves (it takes it back itself too, from hello).
      if (request.nice) trySetNice(child.pid!, request.nice.ready);
      // The point of no return: the child starts accepting when it reads this
      // (a version-1 child accepts without it).
      if (frame.protocol >= COMMIT_PROTOCOL_VERSION) control!.write(encodeFrame({ type: 'commit', protocol: frame.protocol }));
      committed.start(later);
      resolve(committed);
    };

    // The child closed its end without a word. If it is exiting, 'exit' says how;
    // if it keeps running without a channel it can never report ready: fail now,
    // not at the timeout.
    const onEnd = () => {
      eofTimer = setTimeout(() => {
        fail(
          new EcdysisError(
            'ERR_ECDYSIS_PROTOCOL',
            `${label} (pid ${child.pid}) closed the control channel before it was ready; it was killed`,
            { pid: child.pid },
          ),
        );
      }, CHANNEL_CLOSED_GRACE_MS);
    };

    abortWith = fail;
    child.on('exit', onExit);
    child.on('error', onError);
    // Started: watch the channel, say hello.
    function begin(): void {
      spawn(child.pid);
      if (failure) return; // abandoned meanwhile: it is being killed
      if (request.nice) trySetNice(child.pid!, request.nice.starting);
      request.onSpawn?.(child.pid!);
      if (!control) return fail(new EcdysisError('ERR_ECDYSIS_SPAWN_FAILED', 'no control channel to the child'));
      control.on('data', onData);
      control.on('end', onEnd);
      control.on('error', () => {}); // a crash shows up as 'exit'
      try {
        control.write(
          encodeFrame({
            type: 'hello',
            protocol: ANNOUNCED_PROTOCOL_VERSION,
            maxProtocol: PROTOCOL_VERSION,
            parentPid: process.pid,
            generation: request.generation,
            sockets: request.sockets,
            upgradeTimeout: request.timeoutMs,
            handoffFd: HANDOFF_FD,
            handoff: request.handoff,
            ...(request.draining ? { draining: request.draining } : {}),
            ...(request.nice ? { nice: request.nice.ready } : {}),
            ...(request.metrics ? { metrics: request.metrics } : {}),
            ...(request.requestedAt === undefined ? {} : { requestedAt: request.requestedAt }),
            ...(request.worker ? { worker: request.worker } : {}),
            ...(request.peer === undefined ? {} : { peerHandoffFd: HANDOFF_FD + 1 + request.fds.length }),
          }),
        );
      } catch (err) {
        fail(err as EcdysisError);
      }
    }
    // From the start on: a start that never runs (libuv's pool held by the application's own work)
    // fails in time too, and its child, if it ever comes, is killed as soon as it has a pid.
    timer = setTimeout(() => {
      fail(
        new EcdysisError(
          'ERR_ECDYSIS_CHILD_TIMEOUT',
          child.spawning
            ? `${label} was not started within ${request.timeoutMs} ms (its start waits for a thread of libuv's pool); it is killed if it starts`
            : `${label} (pid ${child.pid}) was not ready within ${request.timeoutMs} ms and was killed`,
          { ...(child.pid === undefined ? {} : { pid: child.pid }), signal: 'SIGKILL' },
        ),
      );
    }, request.timeoutMs);
    // From child_process without a pid, or from the addon's thread: 'spawn' or 'error' follows.
    if (child.pid !== undefined) begin();
    else child.once('spawn', begin);
  });
  return {
    get pid() {
      return child.pid;
    },
    spawned,
    ready,
    accepted,
    channel,
    abort: (reason) => abortWith(reason),
  };
}

/** A start that failed before there was a child. */
function notStarted(command: SpawnCommand, err: unknown): PendingSuccessor {
  return { pid: undefined, spawned: Promise.resolve(undefined), ready: Promise.reject(spawnFailed(command, err)), accepted: Promise.resolve(0), channel: undefined, abort: () => {} };
}

function spawnFailed(command: SpawnCommand, err: unknown): EcdysisError {
  return new EcdysisError(
    'ERR_ECDYSIS_SPAWN_FAILED',
    `could not start "${command.file}" in ${command.cwd}: ${(err as Error).message}`,
    { cause: err },
  );
}
