/**
 * The wire protocol between two generations: the whole of it, in one file.
 *
 * ## Environment
 * The parent sets one private variable in the child's environment:
 *
 *     ECDYSIS_HANDOFF=v<protocol>,fd=<control fd>       e.g. "v2,fd=3"
 *
 * (the announced version, see Versions). The child deletes it from
 * `process.env` as soon as it has read it, so its own subprocesses never take
 * themselves for an upgrade. `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES` and
 * `WATCHDOG_PID` are never passed on.
 *
 * ## File descriptors
 * fd 0-2 are inherited as they are. fd 3 is the control channel, one end of a
 * Unix stream socketpair. fd 4 is the hand-over channel (version 4 on, see
 * handoff-channel.ts), and fd 5.. are the registered sockets, in the order the
 * hello frame lists them (each entry also names its fd).
 *
 * ## Frames
 * A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
 * JSON, an object with a string `type` and the integer `protocol` it was written
 * in. A frame longer than {@link MAX_FRAME_BYTES} is refused before it is read.
 *
 * Parent → child, exactly once, right after spawn:
 *   hello  { type, protocol, parentPid, generation, sockets: SocketRecord[],
 *            upgradeTimeout (version 3 on) }
 * Child → parent, exactly once:
 *   ready  { type, protocol, pid }
 *   error  { type, protocol, pid, code, message }     (the child could not start)
 * Parent → child (version 2 on), in answer to ready, unless the parent already
 * gave up on it (timeout, stop: then it kills the child instead):
 *   commit { type, protocol }
 * Child → parent (version 3 on), after commit, at most once:
 *   released { type, protocol, reason: 'stop' | 'partial-stop' | 'upgrade' }
 * Version 4 on: hello also names `handoffFd`, the child's end of the hand-over
 * channel (a seqpacket socketpair, see handoff-channel.ts), and says whether a
 * hand-over follows (`handoff`); the child answers hello at once with
 *   accepted { type, protocol, pid }
 * (only then does the parent run its onHandoff handlers and send), and its ready
 * carries `handoff: { state, files, sockets }`, what it received, which the
 * parent checks before it commits. A hand-over with a child older than 4 is
 * skipped: the parent keeps everything and says so in an event.
 * Version 5 on: parent → child, after commit, at most once, when the parent's
 * drain is over (it serves nothing; it may still watch in its probation):
 *   drained { type, protocol }
 * From then on the child may upgrade although the parent still runs (an
 * application may keep a drained process alive); a child that upgrades while
 * its parent is in probation sends `released` first, and the parent finishes.
 *
 * The child starts accepting only on commit (or on EOF: its parent died and it
 * carries on alone), so a child the parent gives up on never took a connection.
 * A child whose parent is alive but sends no commit within `upgradeTimeout` of
 * its ready gives up (the parent is stuck; it will take the service back).
 * The parent keeps its end open until it exits, so the child reads EOF exactly
 * when its parent is gone, and the parent reads EOF when its successor is gone.
 * After commit the old generation watches its successor while it drains (and
 * during its probation): a successor that dies without having sent `released`
 * (it stops on purpose, or hands the service on to a generation of its own)
 * crashed, and the old generation takes the service back. Frames that arrive in
 * the same read as an earlier frame are kept, never dropped.
 *
 * Without a version change (a child that does not know it ignores it):
 * hello may name `draining`, the older generations still draining, each with
 * its retire endpoint (see retire.ts), when the parent allows upgrades while
 * they drain (`maxDrainingGenerations`); `nice`, the nice value the child
 * takes back once ready when it was started nicer (`niceWhileStarting`);
 * `metrics`, the service's counters, and `requestedAt`, when the upgrade was
 * asked for (the child goes on counting from them). `drained` may carry
 * `drain`, what the parent's drain did with its connections.
 * Version 6 on (operator rollback): child → parent, while the parent still
 * runs after commit,
 *   rollback { type, protocol }
 * asks it to take the service back as it does when its successor dies; the
 * parent answers
 *   rollback { type, protocol, ok, reason? }
 * (ok: it serves again and will not watch this child any more; the child then
 * stops accepting, leaves the sockets to it, drains and exits).
 *
 * A hello entry whose kind this version does not know is skipped and its fd
 * closed if it is a socket (a newer parent may hand over kinds an older child
 * does not serve); a malformed entry is an error.
 *
 * ## Versions
 * 1: hello, ready or error. 2: adds commit (the child waits for it before it
 * accepts). 3: adds `upgradeTimeout` to hello (the bound on the child's wait for
 * commit) and `released` (so the old generation can tell a successor that
 * crashed from one that stopped on purpose). 4: the hand-over channel. A parent
 * announces version 2 (environment and hello's `protocol`), which every child
 * since version 2 accepts, and its own in hello's `maxProtocol`: an upgrade to
 * an older release works, without what that release lacks. A child accepts
 * every version from {@link MIN_PROTOCOL_VERSION} to {@link PROTOCOL_VERSION},
 * speaks the lower of the parent's highest and its own, and answers in it: a
 * newer child understands an older parent (with a version-1 parent it accepts
 * right after ready, as version 1 did). A parent reads the
 * version its child answers in: with a child older than version 3 it does not
 * watch the successor (it cannot tell a crash from a stop). Anything else is
 * ERR_ECDYSIS_PROTOCOL_VERSION, naming both versions. 5: adds `drained`.
 * 6: adds `rollback`. 7: worker groups (hello's `worker`, `stop`, `resume`).
 * 8: hand-over between workers (hello's `peerHandoffFd`, and the hand-over
 * channel's `worker-handoff`, `worker-handoff-failed` and `abort` frames, see
 * handoff-channel.ts).
 *
 * ## Hand-over between worker groups (version 8 on)
 * At an upgrade of a group, old worker i hands over to new worker i, directly:
 * the new primary makes one seqpacket socketpair per worker it starts, gives
 * one end to new worker i at its spawn (hello's `peerHandoffFd`: the hand-over
 * comes on that fd, not on `handoffFd`), and sends the other end to the old
 * primary on their hand-over channel (`worker-handoff { index, pid }` + 1 fd).
 * The old primary passes it on to its worker `index` on their hand-over
 * channel (same frame), or, when it has no such worker serving (the group was
 * smaller, it was being replaced, it was not a group), writes an empty
 * hand-over (`end` with nothing) on it itself. Either way it closes its copy.
 * Old worker i runs its onHandoff handlers and sends on that channel as a
 * single process sends to its successor; new worker i receives as a child
 * does, and is ready only once it has all of it. The old worker gives its
 * moved connections up when its primary orders it to stop for the upgrade
 * (the group's commit), and takes them back when its primary says the upgrade
 * failed (`worker-handoff-failed`) or when the channel closes first.
 */
import { EcdysisError } from '../errors.ts';
import { KIND_FACTS, isSocketKind, type SocketRecord } from './sockets.ts';
import { MAX_NICE, MIN_NICE } from '../internal/priority.ts';

export const PROTOCOL_VERSION = 8;
/** The first version with the commit frame. */
export const COMMIT_PROTOCOL_VERSION = 2;
/** The first version with `released` and hello's `upgradeTimeout`: the old generation watches its successor. */
export const WATCH_PROTOCOL_VERSION = 3;
/** The first version with the hand-over channel (state, files, live connections; ecdysis.channel()). */
export const HANDOFF_PROTOCOL_VERSION = 4;
/** The first version with `drained`: a drained parent no longer holds its successor's upgrades back. */
export const DRAINED_PROTOCOL_VERSION = 5;
/** The first version with `rollback`: a successor asks its parent to take the service back. */
export const ROLLBACK_PROTOCOL_VERSION = 6;
/** The first version with worker groups: hello's `worker`, and `stop` and `resume` to a worker. */
export const WORKER_PROTOCOL_VERSION = 7;
/** The first version with hand-over from old worker i to new worker i (hello's `peerHandoffFd`). */
export const WORKER_HANDOFF_PROTOCOL_VERSION = 8;
export const MIN_PROTOCOL_VERSION = 1;
/**
 * The version a parent announces (in the environment and hello's `protocol`):
 * the oldest one with commit, which every child since version 2 accepts. Its
 * own version goes in hello's `maxProtocol`; a child that knows that field
 * speaks the lower of the two highest versions, an older one answers in this.
 */
export const ANNOUNCED_PROTOCOL_VERSION = COMMIT_PROTOCOL_VERSION;
export const UPGRADE_ENV = 'ECDYSIS_HANDOFF';
export const CONTROL_FD = 3;
/** The lowest fd a socket can have in the child (fd 4 is the hand-over channel from version 4 on). */
export const FIRST_SOCKET_FD = 4;
/** The child's end of the hand-over channel, as this version's parent passes it. */
export const HANDOFF_FD = 4;
/** Large enough for thousands of listeners, small enough to refuse garbage fast. */
export const MAX_FRAME_BYTES = 4 * 1024 * 1024;

/** The most ancestors a hello may name (a bound on what a parent can make us do). */
export const MAX_DRAINING_CHAIN = 64;
/** A retire endpoint's abstract name (generation/retire.ts makes them). */
const ENDPOINT_NAME = /^ecdysis-retire-[0-9a-f]{32}$/;

/** hello's `draining` entries: a generation that upgraded while allowed to keep draining, as its descendants know it. */
export interface DrainingAncestor {
  generation: number;
  pid: number;
  /** Its retire endpoint's abstract name, without the leading NUL. */
  endpoint: string;
}

export function isEndpointName(name: unknown): name is string {
  return typeof name === 'string' && ENDPOINT_NAME.test(name);
}

/** Why a successor tells its parent not to take the service back. */
export type ReleaseReason = 'stop' | 'partial-stop' | 'upgrade';
const RELEASE_REASONS: readonly string[] = ['stop', 'partial-stop', 'upgrade'] satisfies ReleaseReason[];

/** The largest pid and generation number accepted (pid_max is at most 2^22 on Linux). */
const MAX_INT32 = 2_147_483_647;


export interface HelloFrame {
  type: 'hello';
  /**
   * On the wire, the announced version; validated, the version this child
   * speaks with that parent (the lower of the parent's `maxProtocol` and its own).
   */
  protocol: number;
  /** The parent's own version (parents since version 4; older ones send only `protocol`). */
  maxProtocol?: number;
  parentPid: number;
  generation: number;
  sockets: SocketRecord[];
  /** Version 3 on: how long the parent gives the child; bounds the child's wait for commit. */
  upgradeTimeout?: number;
  /** Version 4 on: the child's fd of the hand-over channel. */
  handoffFd?: number;
  /** Version 4 on: state, files or connections follow on the hand-over channel. */
  handoff?: boolean;
  /** Entries of a kind this version does not know: their fds, closed by the child if they are sockets. */
  unknownFds?: number[];
  /**
   * The older generations that may still be draining, oldest first, the parent
   * last (parents allowed more than one draining generation only; ignored by
   * versions that do not know it).
   */
  draining?: DrainingAncestor[];
  /**
   * The child was started nicer than the parent (niceWhileStarting): the nice
   * value it takes back once ready (-20 to 19; ignored by versions that do not
   * know it: the parent gives it back at the commit too).
   */
  nice?: number;
  /** The service's counters so far (`/metrics`), for the child to go on from. */
  metrics?: MetricsSnapshot;
  /** When the upgrade was asked for (Date.now() of the parent), for the child to time it. */
  requestedAt?: number;
  /**
   * Version 7 on: this child is worker `index` of `count` of its parent's
   * group (option `workers`), not the next generation: it serves the sockets
   * it is given until its primary tells it to stop.
   */
  worker?: { index: number; count: number };
  /**
   * Version 8 on, a worker only: its predecessor's hand-over (old worker of the
   * same index) arrives on this fd, a seqpacket socket, not on `handoffFd`.
   */
  peerHandoffFd?: number;
}

/**
 * The counters a service keeps across generations: upgrades by outcome
 * ('ok', 'taken_back', 'rolled_back', 'failed:<code>', 'refused:<code>') and by
 * trigger ('trigger:<name>'), and what the drains of
 * past generations did with their connections.
 */
export interface MetricsSnapshot {
  upgrades: Record<string, number>;
  drained: DrainCounts;
  /** Trigger to serving of the last upgrade, ms. */
  lastUpgradeMs?: number;
}

export interface DrainCounts {
  completed: number;
  closedIdle: number;
  destroyed: number;
}

export interface ReadyFrame {
  type: 'ready';
  protocol: number;
  pid: number;
  /** Version 4 on: what the child received on the hand-over channel, for the parent to check before it commits. */
  handoff?: HandoffSummary;
  /**
   * A new generation: how many sockets of each group (indices 0 to serves - 1)
   * it accepts on: its workers, or 1 alone. A previous worker group's worker of
   * a higher index has no successor on its socket (absent: unknown, an older
   * release; every index is taken to have one).
   */
  serves?: number;
}

/** What a hand-over carried. */
export interface HandoffSummary {
  state: boolean;
  files: number;
  sockets: number;
}

/** Version 4 on, child → parent, right after hello: the child's version (it reads the hand-over channel). */
export interface AcceptedFrame {
  type: 'accepted';
  protocol: number;
  pid: number;
}

export interface ErrorFrame {
  type: 'error';
  protocol: number;
  pid: number;
  code: string;
  message: string;
}

export interface ReleasedFrame {
  type: 'released';
  protocol: number;
  reason: ReleaseReason;
}

/** Version 6 on, child → parent after commit: take the service back (operator rollback). */
export interface RollbackRequestFrame {
  type: 'rollback';
  protocol: number;
}

/**
 * Version 7 on, worker → primary: its state and open connections, when they
 * change (`drain`: what its drain did, once it is drained).
 */
export interface WorkerStatusFrame {
  type: 'status';
  protocol: number;
  state: string;
  connections: number;
  drain?: DrainCounts;
}

export type ChildFrame = ReadyFrame | ErrorFrame | ReleasedFrame | AcceptedFrame | RollbackRequestFrame | WorkerStatusFrame;

export interface CommitFrame {
  type: 'commit';
  protocol: number;
}

/** Version 6 on, parent → child: the answer to the child's `rollback` request. */
export interface RollbackAnswerFrame {
  type: 'rollback';
  protocol: number;
  ok: boolean;
  /** Why not, when not. */
  reason?: string;
}

/** Version 5 on, parent → child after commit: the parent's drain is over. */
export interface DrainedFrame {
  type: 'drained';
  protocol: number;
  /** What the parent's drain did with its connections (for the counters). */
  drain?: DrainCounts;
}

/**
 * Version 7 on, primary → worker, after commit: stop accepting (`mode`
 * 'upgrade': the group handed over, the worker drains and exits; 'stop',
 * 'partial-stop': as the primary's own stop).
 */
export interface StopFrame {
  type: 'stop';
  protocol: number;
  mode: 'upgrade' | 'stop' | 'partial-stop';
  /** End the drain now (the primary's drain was forced). */
  force?: boolean;
  /**
   * `mode` 'upgrade': false when the new generation accepts on none of this
   * worker's own sockets (it is smaller): what waits in them is this worker's
   * to take before it stops accepting. Absent: it has a successor there.
   */
  successor?: false;
}

/** Version 7 on, primary → worker: serve again (the primary took the service back). */
export interface ResumeFrame {
  type: 'resume';
  protocol: number;
}

export type ParentFrame = CommitFrame | DrainedFrame | RollbackAnswerFrame | StopFrame | ResumeFrame;

/** What the private environment variable says. */
export interface UpgradeEnv {
  protocol: number;
  controlFd: number;
}

function protocolError(message: string): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_PROTOCOL', message);
}

export function versionError(theirs: unknown, who: 'parent' | 'child'): EcdysisError {
  return new EcdysisError(
    'ERR_ECDYSIS_PROTOCOL_VERSION',
    `the ${who} speaks ecdysis protocol version ${String(theirs)}; this generation understands versions ` +
      `${MIN_PROTOCOL_VERSION} to ${PROTOCOL_VERSION}`,
  );
}

export function isSupportedVersion(version: unknown): version is number {
  return (
    typeof version === 'number' &&
    Number.isInteger(version) &&
    version >= MIN_PROTOCOL_VERSION &&
    version <= PROTOCOL_VERSION
  );
}

export function encodeUpgradeEnv(controlFd = CONTROL_FD): string {
  return `v${ANNOUNCED_PROTOCOL_VERSION},fd=${controlFd}`;
}

/** Parse the private environment variable; throws ERR_ECDYSIS_BAD_ENVIRONMENT or _PROTOCOL_VERSION. */
export function parseUpgradeEnv(value: string): UpgradeEnv {
  const match = /^v(\d{1,6}),fd=(\d{1,6})$/.exec(value);
  if (!match) {
    const shown = value.length > 64 ? `${value.slice(0, 64)}...` : value;
    throw new EcdysisError(
      'ERR_ECDYSIS_BAD_ENVIRONMENT',
      `${UPGRADE_ENV}=${JSON.stringify(shown)} is not of the form "v<version>,fd=<fd>"; it is set only by ` +
        `ecdysis when it starts the next generation: remove it from the environment`,
    );
  }
  const protocol = Number(match[1]);
  const controlFd = Number(match[2]);
  if (!isSupportedVersion(protocol)) throw versionError(protocol, 'parent');
  if (controlFd < 3) {
    throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `${UPGRADE_ENV} names control fd ${controlFd}, which is stdio`);
  }
  return { protocol, controlFd };
}

export function encodeFrame(frame: HelloFrame | ChildFrame | ParentFrame): Buffer {
  const { unknownFds: _unknownFds, ...wire } = frame as HelloFrame;
  const body = Buffer.from(JSON.stringify(wire), 'utf8');
  if (body.length > MAX_FRAME_BYTES) {
    throw protocolError(`a ${frame.type} frame of ${body.length} bytes exceeds the limit of ${MAX_FRAME_BYTES}`);
  }
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length, 0);
  return Buffer.concat([header, body]);
}

/** Splits a byte stream into frames; throws ERR_ECDYSIS_PROTOCOL on an oversized or non-JSON frame. */
export class FrameDecoder {
  #buffered: Buffer[] = [];
  #size = 0;

  /** Feed bytes; returns the complete frames they finish. */
  push(chunk: Buffer): Record<string, unknown>[] {
    this.#buffered.push(chunk);
    this.#size += chunk.length;
    const frames: Record<string, unknown>[] = [];
    for (;;) {
      if (this.#size < 4) break;
      const data = this.#flatten();
      const length = data.readUInt32BE(0);
      if (length > MAX_FRAME_BYTES) {
        throw protocolError(`frame of ${length} bytes announced, the limit is ${MAX_FRAME_BYTES}`);
      }
      if (data.length < 4 + length) break;
      const body = data.subarray(4, 4 + length);
      this.#buffered = data.length > 4 + length ? [data.subarray(4 + length)] : [];
      this.#size = data.length - 4 - length;
      frames.push(parseBody(body));
    }
    return frames;
  }

  /** Bytes received that do not yet make a whole frame. */
  get pending(): number {
    return this.#size;
  }

  #flatten(): Buffer {
    if (this.#buffered.length !== 1) this.#buffered = [Buffer.concat(this.#buffered)];
    return this.#buffered[0]!;
  }
}

function parseBody(body: Buffer): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new EcdysisError('ERR_ECDYSIS_PROTOCOL', `frame is not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value) || typeof (value as { type?: unknown }).type !== 'string') {
    throw protocolError('frame is not an object with a string "type"');
  }
  return value as Record<string, unknown>;
}

const isInt = (v: unknown, min = 0, max = MAX_INT32): v is number => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max;

/** Validate a frame the parent sent; throws a coded error naming what is wrong. */
export function validateHello(raw: Record<string, unknown>): HelloFrame {
  if (!isSupportedVersion(raw.protocol)) throw versionError(raw.protocol, 'parent');
  if (raw.type !== 'hello') throw protocolError(`expected a hello frame from the parent, got "${String(raw.type)}"`);
  if (raw.maxProtocol !== undefined && !isInt(raw.maxProtocol, raw.protocol)) throw protocolError(`hello.maxProtocol must be an integer from hello.protocol (${raw.protocol}) on`);
  // From here on, `protocol` is the version spoken with this parent.
  const frame: Record<string, unknown> & { protocol: number } = { ...raw, protocol: Math.min(PROTOCOL_VERSION, (raw.maxProtocol as number | undefined) ?? raw.protocol) };
  if (!isInt(frame.parentPid, 1)) throw protocolError(`hello.parentPid must be an integer from 1 to ${MAX_INT32}`);
  // A worker belongs to its primary's generation, which may be the first (0).
  if (!isInt(frame.generation, frame.worker === undefined ? 1 : 0)) throw protocolError(`hello.generation must be an integer from 1 to ${MAX_INT32} (0 for a worker)`);
  if (!Array.isArray(frame.sockets)) throw protocolError('hello.sockets must be an array');
  let upgradeTimeout: number | undefined;
  if (frame.protocol >= WATCH_PROTOCOL_VERSION) {
    if (!isInt(frame.upgradeTimeout, 1)) throw protocolError(`hello.upgradeTimeout must be an integer from 1 to ${MAX_INT32}`);
    upgradeTimeout = frame.upgradeTimeout;
  }
  let handoffFd: number | undefined;
  if (frame.protocol >= HANDOFF_PROTOCOL_VERSION && frame.handoffFd !== undefined) {
    if (!isInt(frame.handoffFd, FIRST_SOCKET_FD)) throw protocolError(`hello.handoffFd must be an integer from ${FIRST_SOCKET_FD}`);
    if (typeof frame.handoff !== 'boolean') throw protocolError('hello.handoff must be a boolean');
    handoffFd = frame.handoffFd;
  }
  let peerHandoffFd: number | undefined;
  if (frame.peerHandoffFd !== undefined) {
    if (frame.protocol < WORKER_HANDOFF_PROTOCOL_VERSION || frame.worker === undefined || handoffFd === undefined || !isInt(frame.peerHandoffFd, FIRST_SOCKET_FD) || frame.peerHandoffFd === handoffFd) {
      throw protocolError(`hello.peerHandoffFd must be an integer from ${FIRST_SOCKET_FD}, other than handoffFd, for a worker, in protocol ${WORKER_HANDOFF_PROTOCOL_VERSION} on`);
    }
    peerHandoffFd = frame.peerHandoffFd;
  }
  const seenKeys = new Set<string>();
  const seenFds = new Set<number>();
  const sockets: SocketRecord[] = [];
  const unknownFds: number[] = [];
  frame.sockets.forEach((raw: unknown, index) => {
    const e = raw as Record<string, unknown>;
    const where = `hello.sockets[${index}]`;
    if (typeof e !== 'object' || e === null) throw protocolError(`${where} must be an object`);
    if (typeof e.key !== 'string' || e.key === '') throw protocolError(`${where}.key must be a non-empty string`);
    if (typeof e.kind !== 'string' || e.kind === '') throw protocolError(`${where}.kind must be a non-empty string`);
    if (!isInt(e.fd, FIRST_SOCKET_FD)) throw protocolError(`${where}.fd must be an integer from ${FIRST_SOCKET_FD} to ${MAX_INT32}`);
    if (seenKeys.has(e.key) || seenFds.has(e.fd) || e.fd === handoffFd || e.fd === frame.peerHandoffFd) throw protocolError(`${where} repeats a key or fd`);
    seenKeys.add(e.key);
    seenFds.add(e.fd);
    if (!isSocketKind(e.kind)) {
      unknownFds.push(e.fd);
      return;
    }
    const entry: SocketRecord = { key: e.key, kind: e.kind, fd: e.fd };
    if (KIND_FACTS[e.kind].family === 'inet') {
      if (typeof e.host !== 'string' || !isInt(e.port, 0, 65535)) throw protocolError(`${where} needs a host and a port`);
      entry.host = e.host;
      entry.port = e.port;
    } else {
      if (typeof e.path !== 'string' || e.path === '') throw protocolError(`${where} needs a path`);
      entry.path = e.path;
      if (isInt(e.pathInode, 0, Number.MAX_SAFE_INTEGER)) entry.pathInode = e.pathInode;
    }
    if (e.activated === true) entry.activated = true;
    sockets.push(entry);
  });
  return {
    type: 'hello',
    protocol: frame.protocol,
    parentPid: frame.parentPid,
    generation: frame.generation,
    sockets,
    ...(upgradeTimeout === undefined ? {} : { upgradeTimeout }),
    ...(handoffFd === undefined ? {} : { handoffFd, handoff: frame.handoff as boolean }),
    ...(unknownFds.length === 0 ? {} : { unknownFds }),
    ...(frame.draining === undefined ? {} : { draining: validateDraining(frame.draining) }),
    ...(frame.nice === undefined ? {} : { nice: validateNice(frame.nice) }),
    ...(frame.metrics === undefined ? {} : { metrics: validateMetrics(frame.metrics) }),
    ...(frame.requestedAt === undefined ? {} : { requestedAt: validateTime(frame.requestedAt, 'hello.requestedAt') }),
    ...(frame.worker === undefined ? {} : { worker: validateWorker(frame.worker, frame.protocol) }),
    ...(peerHandoffFd === undefined ? {} : { peerHandoffFd }),
  };
}

/** At most this many upgrade counters cross (one per outcome and code). */
const MAX_COUNTERS = 64;
const COUNTER_KEY = /^(ok|taken_back|rolled_back|(failed|refused):ERR_ECDYSIS_[A-Z_]{1,64}|trigger:[a-z_]{1,32})$/;
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= Number.MAX_SAFE_INTEGER;

function validateMetrics(raw: unknown): MetricsSnapshot {
  const m = raw as Record<string, unknown> | null;
  if (typeof m !== 'object' || m === null || typeof m.upgrades !== 'object' || m.upgrades === null) throw protocolError('hello.metrics must be { upgrades, drained }');
  const entries = Object.entries(m.upgrades as Record<string, unknown>);
  if (entries.length > MAX_COUNTERS || !entries.every(([key, value]) => COUNTER_KEY.test(key) && isCount(value))) throw protocolError('hello.metrics.upgrades is malformed');
  const last = m.lastUpgradeMs === undefined ? {} : { lastUpgradeMs: validateTime(m.lastUpgradeMs, 'hello.metrics.lastUpgradeMs') };
  return { upgrades: Object.fromEntries(entries) as Record<string, number>, drained: validateDrainCounts(m.drained, 'hello.metrics.drained'), ...last };
}

function validateDrainCounts(raw: unknown, where: string): DrainCounts {
  const d = raw as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null || !isCount(d.completed) || !isCount(d.closedIdle) || !isCount(d.destroyed)) throw protocolError(`${where} must be { completed, closedIdle, destroyed }`);
  return { completed: d.completed, closedIdle: d.closedIdle, destroyed: d.destroyed };
}

/** The most workers a group may have. */
export const MAX_WORKERS = 64;

function validateWorker(raw: unknown, protocol: number): { index: number; count: number } {
  const w = raw as Record<string, unknown> | null;
  if (protocol < WORKER_PROTOCOL_VERSION || typeof w !== 'object' || w === null || !isInt(w.count, 1, MAX_WORKERS) || !isInt(w.index, 0, w.count - 1)) {
    throw protocolError(`hello.worker must be { index, count }, count from 1 to ${MAX_WORKERS}, in protocol ${WORKER_PROTOCOL_VERSION} on`);
  }
  return { index: w.index, count: w.count };
}

function validateTime(raw: unknown, where: string): number {
  if (!isCount(raw)) throw protocolError(`${where} must be a time in milliseconds`);
  return raw;
}

function validateNice(raw: unknown): number {
  if (!isInt(raw, MIN_NICE, MAX_NICE)) throw protocolError(`hello.nice must be an integer from ${MIN_NICE} to ${MAX_NICE}`);
  return raw;
}

function validateDraining(raw: unknown): DrainingAncestor[] {
  if (!Array.isArray(raw) || raw.length > MAX_DRAINING_CHAIN) throw protocolError(`hello.draining must be an array of at most ${MAX_DRAINING_CHAIN} entries`);
  return raw.map((e: Record<string, unknown> | null, index) => {
    const where = `hello.draining[${index}]`;
    if (typeof e !== 'object' || e === null) throw protocolError(`${where} must be an object`);
    if (!isInt(e.generation, 0) || !isInt(e.pid, 1) || !isEndpointName(e.endpoint)) throw protocolError(`${where} needs a generation, a pid and an endpoint name`);
    return { generation: e.generation, pid: e.pid, endpoint: e.endpoint };
  });
}

/** Validate a frame the parent sent after hello. */
export function validateParentFrame(frame: Record<string, unknown>): ParentFrame {
  if (!isSupportedVersion(frame.protocol)) throw versionError(frame.protocol, 'parent');
  if (frame.type === 'commit') return { type: 'commit', protocol: frame.protocol };
  if (frame.type === 'stop' && frame.protocol >= WORKER_PROTOCOL_VERSION && (frame.mode === 'upgrade' || frame.mode === 'stop' || frame.mode === 'partial-stop')) {
    return {
      type: 'stop',
      protocol: frame.protocol,
      mode: frame.mode,
      ...(frame.force === true ? { force: true } : {}),
      ...(frame.successor === false && frame.mode === 'upgrade' ? { successor: false as const } : {}),
    };
  }
  if (frame.type === 'resume' && frame.protocol >= WORKER_PROTOCOL_VERSION) return { type: 'resume', protocol: frame.protocol };
  if (frame.type === 'rollback' && frame.protocol >= ROLLBACK_PROTOCOL_VERSION && typeof frame.ok === 'boolean') {
    const reason = typeof frame.reason === 'string' ? { reason: frame.reason.slice(0, 512) } : {};
    return { type: 'rollback', protocol: frame.protocol, ok: frame.ok, ...reason };
  }
  if (frame.type === 'drained' && frame.protocol >= DRAINED_PROTOCOL_VERSION) {
    return { type: 'drained', protocol: frame.protocol, ...(frame.drain === undefined ? {} : { drain: validateDrainCounts(frame.drain, 'drained.drain') }) };
  }
  throw protocolError(`unexpected frame from the parent: type "${String(frame.type)}"`);
}

/** Validate a frame a child sent. */
export function validateChildFrame(frame: Record<string, unknown>): ChildFrame {
  if (!isSupportedVersion(frame.protocol)) throw versionError(frame.protocol, 'child');
  if (frame.type === 'ready' && isInt(frame.pid, 1)) {
    const ready: ReadyFrame = { type: 'ready', protocol: frame.protocol, pid: frame.pid };
    const h = frame.handoff as Record<string, unknown> | undefined;
    if (frame.protocol >= HANDOFF_PROTOCOL_VERSION && h !== undefined) {
      if (typeof h !== 'object' || h === null || typeof h.state !== 'boolean' || !isInt(h.files) || !isInt(h.sockets)) throw protocolError('ready.handoff is malformed');
      ready.handoff = { state: h.state, files: h.files, sockets: h.sockets };
    }
    if (frame.serves !== undefined) {
      if (!isInt(frame.serves, 1, MAX_WORKERS)) throw protocolError(`ready.serves must be an integer from 1 to ${MAX_WORKERS}`);
      ready.serves = frame.serves;
    }
    return ready;
  }
  if (frame.type === 'accepted' && frame.protocol >= HANDOFF_PROTOCOL_VERSION && isInt(frame.pid, 1)) {
    return { type: 'accepted', protocol: frame.protocol, pid: frame.pid };
  }
  if (frame.type === 'error' && isInt(frame.pid, 1) && typeof frame.code === 'string' && typeof frame.message === 'string') {
    return { type: 'error', protocol: frame.protocol, pid: frame.pid, code: frame.code, message: frame.message };
  }
  if (frame.type === 'rollback' && frame.protocol >= ROLLBACK_PROTOCOL_VERSION) return { type: 'rollback', protocol: frame.protocol };
  if (frame.type === 'status' && frame.protocol >= WORKER_PROTOCOL_VERSION && typeof frame.state === 'string' && /^[a-z-]{1,32}$/.test(frame.state) && isInt(frame.connections)) {
    return {
      type: 'status',
      protocol: frame.protocol,
      state: frame.state,
      connections: frame.connections,
      ...(frame.drain === undefined ? {} : { drain: validateDrainCounts(frame.drain, 'status.drain') }),
    };
  }
  if (frame.type === 'released' && frame.protocol >= WATCH_PROTOCOL_VERSION && RELEASE_REASONS.includes(frame.reason as string)) {
    return { type: 'released', protocol: frame.protocol, reason: frame.reason as ReleaseReason };
  }
  throw protocolError(`unexpected frame from the child: type "${String(frame.type)}"`);
}
