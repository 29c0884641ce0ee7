/**
 * The child side of an upgrade: read and validate what the parent handed over,
 * report ready (or an error), wait for the commit, and notice when the parent is
 * gone (EOF on the control channel). Never calls back into Ecdysis.
 */
import { readSync } from 'node:fs';
import { Socket } from 'node:net';
import { debuglog } from 'node:util';
import { EcdysisError } from '../errors.ts';
import { HandoffChannel } from '../wire/handoff-channel.ts';
import { closeQuietly, native } from '../internal/native.ts';
import {
  COMMIT_PROTOCOL_VERSION,
  FrameDecoder,
  UPGRADE_ENV,
  HANDOFF_PROTOCOL_VERSION,
  MAX_FRAME_BYTES,
  ROLLBACK_PROTOCOL_VERSION,
  MIN_PROTOCOL_VERSION,
  WATCH_PROTOCOL_VERSION,
  WORKER_PROTOCOL_VERSION,
  encodeFrame,
  parseUpgradeEnv,
  validateHello,
  validateParentFrame,
  type ChildFrame,
  type DrainCounts,
  type ResumeFrame,
  type StopFrame,
  type HandoffSummary,
  type HelloFrame,
  type ReleaseReason,
} from '../wire/protocol.ts';

const debug = debuglog('ecdysis');

/**
 * What an unusable control fd most likely means: the variable was not set by
 * ecdysis for this process (a copy of a generation's or a worker's environment,
 * as /proc/<pid>/environ shows it, used to start a process by hand).
 */
const STARTED_BY_HAND =
  `; ${UPGRADE_ENV} is set only by ecdysis, for a process it starts (the next generation, or a worker of a group) with that fd open: ` +
  'a process started with a copy of that environment cannot be either. Start the service without it (a worker is started by its primary, never by hand)';

/** How long the child waits for the hello frame; the parent sends it right after spawn. */
export const HELLO_TIMEOUT_MS = 10_000;

/** How a hand-over ended, as the child sees it. */
export type ReadyOutcome =
  /** The parent committed: this generation serves. */
  | 'committed'
  /** The parent died first: this generation carries on alone. */
  | 'parent-gone'
  /** The parent is alive but did not commit within its own upgrade timeout. */
  | 'timeout';

export interface ParentLink {
  hello: HelloFrame;
  /** This end of the hand-over channel (version 4 parents). */
  channel: HandoffChannel | undefined;
  /** A worker whose predecessor (old worker of its index) hands over: the channel it comes on (version 8). */
  peer: HandoffChannel | undefined;
  /**
   * Send ready and wait for the parent's commit. A parent that gave up on this
   * child never commits; it kills it. A parent that neither commits nor dies
   * within `commitTimeoutMs` is stuck (stopped, hung): 'timeout'.
   */
  /** `serves`: how many sockets of each group this generation accepts on (ReadyFrame.serves; not a worker's). */
  sendReady(commitTimeoutMs: number, handoff?: HandoffSummary, serves?: number): Promise<ReadyOutcome>;
  /** Report a start-up failure to the parent (best effort); resolves once written. */
  sendError(code: string, message: string): Promise<boolean>;
  /**
   * Tell a watching parent that this generation ends on purpose (a stop, or an
   * upgrade of its own), so that it does not take the service back when this
   * process exits. Best effort; does nothing for a parent older than version 3.
   */
  release(reason: ReleaseReason): void;
  /**
   * Ask the parent to take the service back (version 6 on): its answer, or
   * not ok when it is gone, speaks an older version, or does not answer in
   * `timeoutMs`.
   */
  requestRollback(timeoutMs: number): Promise<{ ok: boolean; reason?: string }>;
  /** A worker: what its primary tells it after commit (stop accepting, serve again), in order. */
  onOrder(handler: (order: StopFrame | ResumeFrame) => void): void;
  /** A worker: tell the primary its state and open connections (best effort). */
  sendStatus(state: string, connections: number, drain?: DrainCounts): void;
  /** Resolves when the parent has exited (EOF on the control channel). */
  parentExited: Promise<void>;
  readonly parentAlive: boolean;
  /**
   * Resolves when the parent says its drain is over (version 5 on): it serves
   * nothing, and this generation may upgrade although it still runs.
   */
  parentDrained: Promise<DrainCounts | undefined>;
  readonly drained: boolean;
  /** Close the control channel. */
  close(): void;
}

/**
 * Read the private environment variable (and delete it), validate the control
 * fd, read the hello frame. Returns undefined when this process was not started
 * by an upgrade. Throws ERR_ECDYSIS_BAD_ENVIRONMENT, _PROTOCOL or
 * _PROTOCOL_VERSION; never hangs longer than `helloTimeoutMs`.
 */
export async function connectToParent(
  env: NodeJS.ProcessEnv = process.env,
  helloTimeoutMs = HELLO_TIMEOUT_MS,
): Promise<ParentLink | undefined> {
  const value = env[UPGRADE_ENV];
  if (value === undefined) return undefined;
  // Gone before anything else can fail, so no subprocess of ours ever sees it.
  delete env[UPGRADE_ENV];
  const { controlFd } = parseUpgradeEnv(value);

  let description;
  try {
    description = native().describe(controlFd);
  } catch (err) {
    throw new EcdysisError(
      'ERR_ECDYSIS_BAD_ENVIRONMENT',
      `${UPGRADE_ENV} names control fd ${controlFd}, which is unusable: ${(err as Error).message}${STARTED_BY_HAND}`,
      { cause: err },
    );
  }
  if (!description.socket || description.domain !== 'unix' || description.type !== 'stream') {
    throw new EcdysisError(
      'ERR_ECDYSIS_BAD_ENVIRONMENT',
      `${UPGRADE_ENV} names control fd ${controlFd}, which is not a Unix stream socket${STARTED_BY_HAND}`,
    );
  }
  native().setCloexec(controlFd, true);
  const early = readWaiting(controlFd);

  let control: Socket;
  try {
    control = new Socket({ fd: controlFd, readable: true, writable: true });
  } catch (err) {
    closeQuietly(controlFd);
    throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `control fd ${controlFd}: ${(err as Error).message}`, { cause: err });
  }
  // The channel must never keep this process alive on its own.
  control.unref();
  control.on('error', () => {});
  const channel = new ParentChannel(control, helloTimeoutMs, early);

  let hello: HelloFrame;
  try {
    hello = await channel.hello;
    if ([...hello.sockets.map((s) => s.fd), ...(hello.unknownFds ?? [])].includes(controlFd)) {
      throw new EcdysisError('ERR_ECDYSIS_PROTOCOL', `hello lists fd ${controlFd}, which is the control channel, as a socket`);
    }
    if (hello.handoffFd !== undefined) {
      let description;
      try {
        description = native().describe(hello.handoffFd);
      } catch (err) {
        throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `the hand-over channel (fd ${hello.handoffFd}) is unusable: ${(err as Error).message}`, { cause: err });
      }
      if (!description.socket || description.domain !== 'unix' || description.type !== 'seqpacket') {
        throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `the hand-over channel (fd ${hello.handoffFd}) is not a Unix seqpacket socket`);
      }
      native().setCloexec(hello.handoffFd, true);
    }
    if (hello.peerHandoffFd !== undefined) checkSeqpacket(hello.peerHandoffFd, 'the predecessor\'s hand-over channel');
  } catch (err) {
    // Tell the parent why (best effort: the channel may be what is broken), so its
    // upgrade fails with this error rather than a bare exit.
    const error = err as EcdysisError;
    await channel.write({ type: 'error', protocol: MIN_PROTOCOL_VERSION, pid: process.pid, code: error.code, message: error.message });
    control.destroy();
    throw err;
  }
  // A version-4 parent runs its onHandoff handlers once it knows this child reads the hand-over channel.
  if (hello.protocol >= HANDOFF_PROTOCOL_VERSION) void channel.write({ type: 'accepted', protocol: hello.protocol, pid: process.pid });
  const handoff = hello.handoffFd === undefined ? undefined : new HandoffChannel(hello.handoffFd);
  const peer = hello.peerHandoffFd === undefined ? undefined : new HandoffChannel(hello.peerHandoffFd);
  return channel.link(hello, handoff, peer);
}

/**
 * What the parent already wrote on the control socket, read at once: the hello
 * is there when this process gets here (the parent writes it as it starts the
 * child). Read now, it is checked in this turn; through the Socket, it would
 * wait for a turn of the event loop and the stream's first read (about 2 ms of
 * CPU in a starting child). Reads only what SIOCINQ says is waiting, so it
 * never blocks; anything that fails leaves it all to the Socket.
 */
function readWaiting(fd: number): Buffer | undefined {
  try {
    const waiting = native().pendingBytes(fd);
    if (waiting <= 0) return undefined;
    const buffer = Buffer.allocUnsafe(Math.min(waiting, MAX_FRAME_BYTES + 4));
    const read = readSync(fd, buffer, 0, buffer.length, null);
    return read > 0 ? buffer.subarray(0, read) : undefined;
  } catch {
    return undefined;
  }
}

/** An inherited fd that must be a Unix seqpacket socket (a hand-over channel): made close-on-exec. */
function checkSeqpacket(fd: number, what: string): void {
  let description;
  try {
    description = native().describe(fd);
  } catch (err) {
    throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `${what} (fd ${fd}) is unusable: ${(err as Error).message}`, { cause: err });
  }
  if (!description.socket || description.domain !== 'unix' || description.type !== 'seqpacket') {
    throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `${what} (fd ${fd}) is not a Unix seqpacket socket`);
  }
  native().setCloexec(fd, true);
}

/**
 * The control channel, read by one decoder for its whole life, so that frames
 * arriving in the same read as hello (or before ready) are kept.
 */
class ParentChannel {
  readonly hello: Promise<HelloFrame>;
  readonly parentExited: Promise<void>;
  readonly parentDrained: Promise<DrainCounts | undefined>;
  #control: Socket;
  #alive = true;
  #helloSeen = false;
  #committed = false;
  #drained = false;
  #resolveDrained!: (drain: DrainCounts | undefined) => void;
  #onHello!: { resolve: (hello: HelloFrame) => void; reject: (err: Error) => void };
  #onCommit: (() => void) | undefined;
  #onGone: (() => void) | undefined;
  #onRollbackAnswer: ((answer: { ok: boolean; reason?: string }) => void) | undefined;
  #onOrder: ((order: StopFrame | ResumeFrame) => void) | undefined;
  #pendingOrders: (StopFrame | ResumeFrame)[] = [];
  #resolveExited!: () => void;

  /** `early`: what was read from the control socket before `control` took it over (see readWaiting), the hello usually. */
  constructor(control: Socket, helloTimeoutMs: number, early?: Buffer) {
    this.#control = control;
    this.hello = new Promise((resolve, reject) => (this.#onHello = { resolve, reject }));
    this.parentExited = new Promise((resolve) => (this.#resolveExited = resolve));
    this.parentDrained = new Promise((resolve) => (this.#resolveDrained = resolve));
    const decoder = new FrameDecoder();
    const timer = setTimeout(
      () => this.#failHello(new EcdysisError('ERR_ECDYSIS_PROTOCOL', `no hello from the parent within ${helloTimeoutMs} ms`)),
      helloTimeoutMs,
    );
    void this.hello.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    const gone = () => {
      if (!this.#helloSeen) {
        this.#failHello(
          new EcdysisError(
            'ERR_ECDYSIS_PROTOCOL',
            decoder.pending > 0
              ? `truncated hello: the control channel closed after ${decoder.pending} bytes`
              : 'the control channel closed before the parent sent hello',
          ),
        );
      }
      this.#gone();
    };
    control.on('end', gone);
    control.on('close', gone);
    const take = (chunk: Buffer) => {
      let frames;
      try {
        frames = decoder.push(chunk);
      } catch (err) {
        return this.#protocolFailure(err as EcdysisError);
      }
      for (const frame of frames) {
        try {
          if (!this.#helloSeen) {
            const hello = validateHello(frame);
            this.#helloSeen = true;
            this.#onHello.resolve(hello);
          } else {
            const parentFrame = validateParentFrame(frame);
            if (parentFrame.type === 'commit') {
              this.#committed = true;
              this.#onCommit?.();
            } else if (parentFrame.type === 'rollback') {
              this.#onRollbackAnswer?.(parentFrame);
            } else if (parentFrame.type === 'stop' || parentFrame.type === 'resume') {
              // A worker's orders from its primary (version 7 on).
              if (this.#onOrder) this.#onOrder(parentFrame);
              else this.#pendingOrders.push(parentFrame);
            } else if (!this.#drained) {
              this.#drained = true;
              this.#resolveDrained(parentFrame.drain);
            }
          }
        } catch (err) {
          return this.#protocolFailure(err as EcdysisError);
        }
      }
    };
    if (early) take(early);
    control.on('data', take);
  }

  #failHello(err: Error): void {
    this.#helloSeen = true;
    this.#onHello.reject(err);
  }

  #protocolFailure(err: EcdysisError): void {
    if (!this.#helloSeen) return this.#failHello(err);
    // A parent that speaks nonsense after hello cannot be trusted to commit or
    // to keep serving: drop the channel and carry on alone.
    debug('control channel: %s', err.message);
    this.#gone();
  }

  #gone(): void {
    if (!this.#alive) return;
    this.#alive = false;
    this.#control.destroy();
    this.#onGone?.();
    this.#resolveExited();
  }

  write(frame: Parameters<typeof encodeFrame>[0]): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      if (!this.#alive || this.#control.destroyed || !this.#control.writable) return resolve(false);
      this.#control.write(encodeFrame(frame), (err) => resolve(!err));
    });
  }

  link(hello: HelloFrame, handoff: HandoffChannel | undefined, peer: HandoffChannel | undefined): ParentLink {
    for (const fd of hello.unknownFds ?? []) closeIfSocket(fd);
    let released = false;
    const isAlive = () => this.#alive;
    const isDrained = () => this.#drained;
    return {
      hello,
      channel: handoff,
      peer,
      parentExited: this.parentExited,
      parentDrained: this.parentDrained,
      get parentAlive() {
        return isAlive();
      },
      get drained() {
        return isDrained();
      },
      sendReady: (commitTimeoutMs, summary, serves) => this.#sendReady(hello, commitTimeoutMs, summary, serves),
      sendError: (code, message) => this.write({ type: 'error', protocol: hello.protocol, pid: process.pid, code, message: message.slice(0, 4096) }),
      release: (reason) => {
        if (released || hello.protocol < WATCH_PROTOCOL_VERSION) return;
        released = true;
        void this.write({ type: 'released', protocol: hello.protocol, reason } satisfies ChildFrame);
      },
      requestRollback: (timeoutMs) => this.#requestRollback(hello, timeoutMs),
      sendStatus: (state, connections, drain) => {
        if (hello.protocol < WORKER_PROTOCOL_VERSION) return;
        void this.write({ type: 'status', protocol: hello.protocol, state, connections, ...(drain ? { drain } : {}) });
      },
      onOrder: (handler) => {
        this.#onOrder = handler;
        for (const order of this.#pendingOrders.splice(0)) handler(order);
      },
      close: () => this.#control.destroy(),
    };
  }

  async #requestRollback(hello: HelloFrame, timeoutMs: number): Promise<{ ok: boolean; reason?: string }> {
    if (hello.protocol < ROLLBACK_PROTOCOL_VERSION) return { ok: false, reason: `the previous generation speaks protocol ${hello.protocol}, without rollback` };
    if (this.#onRollbackAnswer) return { ok: false, reason: 'a rollback is already being asked for' };
    let timer: NodeJS.Timeout | undefined;
    try {
      const answer = new Promise<{ ok: boolean; reason?: string }>((resolve) => {
        this.#onRollbackAnswer = resolve;
        const gone = this.#onGone;
        this.#onGone = () => {
          gone?.();
          resolve({ ok: false, reason: 'the previous generation has exited' });
        };
        timer = setTimeout(() => resolve({ ok: false, reason: `the previous generation did not answer within ${timeoutMs} ms` }), timeoutMs);
      });
      if (!(await this.write({ type: 'rollback', protocol: hello.protocol }))) return { ok: false, reason: 'the previous generation has exited' };
      return await answer;
    } finally {
      clearTimeout(timer);
      this.#onRollbackAnswer = undefined;
    }
  }

  async #sendReady(hello: HelloFrame, commitTimeoutMs: number, handoff: HandoffSummary | undefined, serves: number | undefined): Promise<ReadyOutcome> {
    // Nothing else may hold the loop open yet (listeners accept only after
    // commit): the channel itself must, until the parent answers.
    this.#control.ref();
    let timer: NodeJS.Timeout | undefined;
    try {
      const delivered = await this.write({
        type: 'ready',
        protocol: hello.protocol,
        pid: process.pid,
        ...(handoff && hello.protocol >= HANDOFF_PROTOCOL_VERSION ? { handoff } : {}),
        ...(serves !== undefined && hello.protocol >= WORKER_PROTOCOL_VERSION ? { serves } : {}),
      });
      if (!delivered) return 'parent-gone';
      // A version-1 parent never commits: it stops accepting when it reads ready.
      if (hello.protocol < COMMIT_PROTOCOL_VERSION || this.#committed) return 'committed';
      return await new Promise<ReadyOutcome>((resolve) => {
        this.#onCommit = () => resolve('committed');
        this.#onGone = () => resolve('parent-gone');
        timer = setTimeout(() => resolve(this.#committed ? 'committed' : 'timeout'), commitTimeoutMs);
      });
    } finally {
      clearTimeout(timer);
      this.#onCommit = undefined;
      this.#onGone = undefined;
      if (!this.#control.destroyed) this.#control.unref();
    }
  }
}

/**
 * An fd listed under a kind this version does not know: close it, but only if
 * it is a socket (never an fd this process may own for itself, such as libuv's).
 */
function closeIfSocket(fd: number): void {
  try {
    const socket = native().describe(fd).socket;
    if (socket) native().close(fd);
    debug('inherited fd %d is of a kind this version does not know: %s', fd, socket ? 'closed' : 'not a socket, left alone');
  } catch {
    debug('inherited fd %d is of a kind this version does not know and unusable', fd);
  }
}

/**
 * The parent has exited (EOF on the control channel) and its hand-over channel
 * is closed too, after everything the parent sent on it was read: from then on
 * this process holds no fd of the parent's. The channel ends with the parent;
 * should some other process still hold the parent's end, it is closed here
 * after a second.
 */
export async function parentGone(link: ParentLink): Promise<void> {
  await link.parentExited;
  const channel = link.channel;
  if (!channel || channel.closed) return;
  const fallback = setTimeout(() => channel.close(), 1000);
  fallback.unref();
  await channel.whenClosed;
  clearTimeout(fallback);
}

/** Resolves once the parent has exited (at once without one); rejects with the signal's reason if it aborts first. */
export function waitForParentExit(link: ParentLink | undefined, signal?: AbortSignal): Promise<void> {
  if (!link || !link.parentAlive) return Promise.resolve();
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal!.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    void link.parentExited.then(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}
