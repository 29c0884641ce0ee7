/**
 * Hand-over in worker groups (protocol version 8), as lifecycle policy: old
 * worker i hands its state and live connections to new worker i, directly.
 * The new primary makes the channel for each new worker (predecessorChannel);
 * the old primary passes it on to its worker of that index, or answers with an
 * empty hand-over (passOnWorkerHandoff); the old worker runs its onHandoff
 * handlers and sends on it (takeOffer), and its hand-over is decided with the
 * group's upgrade: committed at its primary's stop order for the upgrade,
 * aborted when the primary says the upgrade failed, when the channel closes
 * first, or at any other stop (settleOnStop). The new worker's side is the
 * single-process receiver on the channel hello names (start.ts).
 */
import { EcdysisError } from '../errors.ts';
import { HandoffSender, handOverNothing } from '../generation/handoff-send.ts';
import { closeQuietly, native } from '../internal/native.ts';
import { HandoffChannel, type Frame } from '../wire/handoff-channel.ts';
import { MAX_WORKERS, WORKER_HANDOFF_PROTOCOL_VERSION, type StopFrame } from '../wire/protocol.ts';
import { debug, type Generation } from './core.ts';
import type { Phase } from './machine.ts';

// --- the new primary ----------------------------------------------------------------

/**
 * A new primary's worker `index`: a channel for the hand-over of the previous
 * group's worker of that index. Its end goes to the new worker at its spawn;
 * the other end to the previous primary, which passes it on (or, without such
 * a worker, writes an empty hand-over on it). Nothing when this primary did
 * not come from an upgrade, or its parent speaks a version before 8.
 */
export function predecessorChannel(g: Generation, index: number): { fd: number; offer(pid: number | undefined): void } | undefined {
  const channel = g.link?.channel;
  if (!channel || channel.closed || g.link!.hello.protocol < WORKER_HANDOFF_PROTOCOL_VERSION) return undefined;
  let pair: [number, number];
  try {
    pair = native().socketPair('seqpacket');
  } catch (err) {
    debug('no hand-over channel for worker %d: %s', index, (err as Error).message);
    return undefined;
  }
  const [ours, theirs] = pair;
  return {
    fd: theirs,
    offer: (pid) => {
      // The message holds its own copy of the fd from the call on; without one, the new worker reads the end at once.
      if (pid !== undefined && !channel.closed) channel.send({ t: 'worker-handoff', index, pid }, undefined, [ours]).catch((err: Error) => debug('hand-over channel of worker %d: %s', index, err.message));
      closeQuietly(ours);
    },
  };
}

// --- the old primary ----------------------------------------------------------------

/**
 * The previous primary's side: the new primary sent the channel to its new
 * worker `index`. Checked (an index, a pid, one seqpacket socket, once per
 * index and upgrade, while this upgrade is under way), then passed on to this
 * group's worker of that index, or answered with an empty hand-over (no group:
 * this process served alone). Whatever fails the check is closed.
 */
export function passOnWorkerHandoff(g: Generation, upgrading: Phase, frame: Frame, offered: Set<number>): void {
  const [fd, ...extra] = frame.fds;
  for (const unexpected of extra) closeQuietly(unexpected);
  if (fd === undefined) return;
  const { index, pid } = frame.header;
  const valid = g.phase === upgrading && Number.isInteger(index) && (index as number) >= 0 && (index as number) < MAX_WORKERS && !offered.has(index as number) && Number.isInteger(pid) && (pid as number) > 0 && isSeqpacket(fd);
  if (!valid) {
    debug('worker-handoff frame refused: index %o, pid %o', index, pid);
    return closeQuietly(fd);
  }
  offered.add(index as number);
  if (g.group) g.group.offerHandoff(index as number, fd, pid as number);
  else handOverNothing(fd);
}

function isSeqpacket(fd: number): boolean {
  try {
    const description = native().describe(fd);
    return description.socket && description.domain === 'unix' && description.type === 'seqpacket';
  } catch {
    return false;
  }
}

/** Worker `index` says its handlers failed: the upgrade fails with its reason (its successor fails too, more slowly and less precisely). */
export function workerHandoffFailed(g: Generation, index: number, message: string): void {
  const phase = g.phase;
  if (phase.state === 'upgrading') phase.child?.abort(new EcdysisError('ERR_ECDYSIS_HANDOFF', `worker ${index} could not hand over: ${message}`));
}

// --- an old worker ------------------------------------------------------------------

/**
 * A worker: what its primary says on the hand-over channel about an upgrade:
 * `worker-handoff` (the channel to the new worker of this index: run the
 * onHandoff handlers and send on it, as a single process does to its
 * successor) or `worker-handoff-failed` (keep it all). True when the frame was one of these.
 */
export function takeOffer(g: Generation, frame: Frame): boolean {
  const { header, fds } = frame;
  if (header.t === 'worker-handoff-failed') {
    for (const fd of fds) closeQuietly(fd);
    settleWorkerHandoff(g, 'abort');
    return true;
  }
  if (header.t !== 'worker-handoff') return false;
  const [fd, ...extra] = fds;
  for (const unexpected of extra) closeQuietly(unexpected);
  const pid = header.pid;
  if (fd === undefined) return true;
  if (!isSeqpacket(fd) || !Number.isInteger(pid) || (pid as number) <= 0) {
    closeQuietly(fd);
    return true;
  }
  // An earlier attempt's whose failure did not come (the primary gave up on it): this one replaces it.
  settleWorkerHandoff(g, 'abort');
  const channel = new HandoffChannel(fd);
  const sender = new HandoffSender(g.generation + 1, g.options.maxHandoffBytes);
  const outgoing = { sender, channel };
  g.workerHandoff = outgoing;
  // The new worker is gone before the upgrade was decided: this one keeps everything.
  channel.receive(
    (received) => received.fds.forEach(closeQuietly),
    () => {
      if (g.workerHandoff === outgoing) settleWorkerHandoff(g, 'abort');
    },
  );
  // Only a worker that serves hands over what it serves; one already leaving sends an empty hand-over.
  const handlers = g.phase.state === 'ready' ? [...g.handoffHandlers] : [];
  debug('handing over to worker %d of generation %d (pid %d)', g.link!.hello.worker!.index, g.generation + 1, pid);
  sender.run(handlers, channel, pid as number).then(
    (sent) => debug('hand-over sent: %o', sent),
    (err: Error) => {
      debug('hand-over failed: %s', err.message);
      // The new worker fails with this, and the primary fails the upgrade with it; this one keeps everything.
      const message = err.message.slice(0, 1024);
      if (!channel.closed) channel.send({ t: 'abort', message }).catch(() => {});
      const primary = g.link!.channel;
      if (primary && !primary.closed) primary.send({ t: 'worker-handoff-failed', message }).catch(() => {});
      if (g.workerHandoff === outgoing) settleWorkerHandoff(g, 'abort');
    },
  );
  return true;
}

/**
 * The worker's hand-over is decided: committed (its primary committed to the
 * new group: the new worker owns the moved connections), or aborted (they
 * resume here). The channel to the new worker closes either way.
 */
function settleWorkerHandoff(g: Generation, how: 'commit' | 'abort'): void {
  const outgoing = g.workerHandoff;
  if (!outgoing) return;
  g.workerHandoff = undefined;
  if (how === 'commit') outgoing.sender.commit();
  else outgoing.sender.abort();
  outgoing.channel.close();
}

/**
 * A stop order from the primary: for an upgrade (not forced) it is the
 * group's commit, and a hand-over under way is the new worker's now; a worker
 * with handlers that got no channel has no successor (a smaller group). Any
 * other stop takes a hand-over under way back.
 */
export function settleOnStop(g: Generation, order: StopFrame): void {
  if (order.mode === 'upgrade' && !order.force) {
    if (g.workerHandoff) settleWorkerHandoff(g, 'commit');
    else if (g.handoffHandlers.length > 0 && g.phase.state === 'ready') skipped(g);
  } else {
    settleWorkerHandoff(g, 'abort');
  }
}

/** The new group has no worker of this index (it is smaller, or one process): nothing is handed over, the connections drain here. */
function skipped(g: Generation): void {
  const index = g.link!.hello.worker!.index;
  const reason = `no worker of generation ${g.generation + 1} took worker ${index}'s hand-over (the new generation has no worker ${index}): its state stays here and its connections drain`;
  queueMicrotask(() => g.emit({ type: 'handoff-skipped', reason }));
}
