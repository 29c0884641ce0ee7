/**
 * A successor after the commit, as the old generation sees it: watched until it
 * exits (a crash, unless it said `released` first: then the old generation may
 * take the service back), told when this generation's drain is over.
 */
import type { ChildHandle } from './child-start.ts';
import type { Socket } from 'node:net';
import { DRAINED_PROTOCOL_VERSION, WATCH_PROTOCOL_VERSION, WORKER_PROTOCOL_VERSION, encodeFrame, validateChildFrame, type ChildFrame, type DrainCounts, type FrameDecoder, type ReleaseReason, type ResumeFrame, type StopFrame, type WorkerStatusFrame } from '../wire/protocol.ts';

/** After a successor's exit, how long its last frames may take to be read (its end closes at exit). */
const LAST_FRAMES_GRACE_MS = 1_000;

/** How a successor ended. */
export interface SuccessorEnd {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the successor said, before it exited, that it ended on purpose. */
  released: ReleaseReason | undefined;
}

/** A child the parent committed to. The parent keeps the channel open until it exits. */
export interface Successor {
  pid: number;
  /** The protocol version the child answered in. */
  protocol: number;
  /**
   * True when the child speaks a version that says `released`, so that its exit
   * without one means it crashed.
   */
  watchable: boolean;
  /** Resolves once the child has exited and every frame it sent has been read. */
  ended: Promise<SuccessorEnd>;
  /** Resolves when the child says it ends on purpose or upgrades (`released`); never for older children. */
  released: Promise<ReleaseReason>;
  /**
   * What to answer when the child asks this generation to take the service
   * back (version 6 on): called synchronously, its answer is sent at once.
   */
  onRollback(decide: () => { ok: boolean; reason?: string }): void;
  /** A worker (version 7 on): each status it reports (state, open connections; its drain once drained). */
  onStatus(handler: (status: WorkerStatusFrame) => void): void;
  /** A worker (version 7 on): stop accepting ('upgrade', 'stop', 'partial-stop'), or serve again. Best effort. */
  order(order: Omit<StopFrame, 'protocol'> | Omit<ResumeFrame, 'protocol'>): void;
  /**
   * Tell the child this generation's drain is over (version 5 on; once): it
   * may upgrade although this process still runs.
   */
  drained(drain?: DrainCounts): void;
  /**
   * Stop watching: `ended` never resolves. The channel stays open until this
   * process exits, so the successor still sees its parent alive until then.
   */
  forget(): void;
}

/**
 * After commit: the successor is on its own, and neither it nor the channel may
 * keep this (exiting) process alive. Read what it still says (`released`) until
 * it exits; its end of the channel closes when it does.
 */
export function watch(
  child: ChildHandle,
  control: Socket,
  protocol: number,
  decoder: FrameDecoder,
): Successor & { start(pending: ChildFrame[]): void } {
  let released: ReleaseReason | undefined;
  let forgotten = false;
  let toldDrained = false;
  let resolveEnded!: (end: SuccessorEnd) => void;
  const ended = new Promise<SuccessorEnd>((resolve) => (resolveEnded = resolve));
  let resolveReleased!: (reason: ReleaseReason) => void;
  const releasedOnce = new Promise<ReleaseReason>((resolve) => (resolveReleased = resolve));
  let decideRollback: (() => { ok: boolean; reason?: string }) | undefined;
  let onStatus: ((status: WorkerStatusFrame) => void) | undefined;
  let lastStatus: WorkerStatusFrame | undefined;
  const take = (frames: ChildFrame[]) => {
    for (const frame of frames) {
      if (frame.type === 'status') {
        lastStatus = frame;
        if (!forgotten) onStatus?.(frame);
        continue;
      }
      if (frame.type === 'rollback') {
        const answer = forgotten || !decideRollback ? { ok: false, reason: 'this generation no longer watches its successor' } : decideRollback();
        if (!control.destroyed && control.writable) control.write(encodeFrame({ type: 'rollback', protocol, ...answer }));
        continue;
      }
      if (frame.type !== 'released' || released) continue;
      released = frame.reason;
      if (!forgotten) resolveReleased(frame.reason);
    }
  };
  const onData = (chunk: Buffer) => {
    try {
      take(decoder.push(chunk).map(validateChildFrame));
    } catch {
      // Nonsense from a committed successor changes nothing: its exit decides.
      control.off('data', onData);
      control.resume();
    }
  };
  const onExit = (exitCode: number | null, signal: NodeJS.Signals | null) => {
    const finish = () => {
      clearTimeout(timer);
      control.destroy();
      if (!forgotten) resolveEnded({ exitCode, signal, released });
    };
    const timer = setTimeout(finish, LAST_FRAMES_GRACE_MS);
    if (control.destroyed || control.readableEnded) return finish();
    control.once('close', finish);
  };
  return {
    pid: child.pid!,
    protocol,
    watchable: protocol >= WATCH_PROTOCOL_VERSION,
    ended,
    released: releasedOnce,
    onRollback(decide) {
      decideRollback = decide;
    },
    onStatus(handler) {
      onStatus = handler;
      if (lastStatus) handler(lastStatus);
    },
    order(order) {
      if (protocol < WORKER_PROTOCOL_VERSION || control.destroyed || !control.writable) return;
      control.write(encodeFrame({ ...order, protocol }));
    },
    drained(drain) {
      if (toldDrained || protocol < DRAINED_PROTOCOL_VERSION || control.destroyed || !control.writable) return;
      toldDrained = true;
      control.write(encodeFrame({ type: 'drained', protocol, ...(drain ? { drain } : {}) }));
    },
    start(pending) {
      take(pending);
      control.on('data', onData);
      control.on('error', () => {});
      child.once('exit', onExit);
      if (child.exitCode !== null || child.signalCode !== null) onExit(child.exitCode, child.signalCode);
      control.unref();
      child.unref();
    },
    forget() {
      forgotten = true;
      control.off('data', onData);
      child.off('exit', onExit);
    },
  };
}
