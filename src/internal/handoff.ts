/**
 * Hand-over beyond listeners (protocol version 4): state, files and live
 * connections move from the old generation to the new one over the hand-over
 * channel, transactionally: the old generation gives up nothing until the new
 * one commits; if it fails, every paused connection resumes where it stopped.
 */
import { fstatSync, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Socket } from 'node:net';
import { debuglog } from 'node:util';
import { EcdysisError } from '../errors.ts';
import { MAX_FRAME_PAYLOAD, type Frame, type HandoffChannel } from './handoff-channel.ts';
import { closeQuietly } from './native.ts';
import type { HandoffSummary } from './protocol.ts';

const debug = debuglog('ecdysis');

function handoffError(message: string, cause?: unknown): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_HANDOFF', message, cause === undefined ? {} : { cause });
}

/** A function the old generation registers with onHandoff(). */
export type HandoffHandler = (handoff: Handoff) => unknown;

/** What the new generation got from the old one. */
export interface Inherited {
  /** The value the old generation passed to `handoff.state()` (a Buffer stays a Buffer); undefined if none. */
  state: unknown;
  /** Files by key: fds this process now owns (close-on-exec). */
  files: Map<string, number>;
  /** Live connections by key, with the bytes read but not consumed before the move delivered first. */
  sockets: Map<string, { socket: Socket; meta: unknown }>;
}

export interface HandoffSocketOptions {
  /** Anything JSON can carry, given to the new generation with the socket (a session id...). */
  meta?: unknown;
}

/** The kind of file an fd is, as the two generations compare it. */
/** The one fd a file or socket frame carries; any extra ones are closed. */
function onlyFd(fds: readonly number[]): number | undefined {
  const [fd, ...extra] = fds;
  for (const unexpected of extra) closeQuietly(unexpected);
  return fd;
}

function fileType(stats: Stats): string {
  if (stats.isSocket()) return 'socket';
  if (stats.isFIFO()) return 'fifo';
  if (stats.isCharacterDevice()) return 'character-device';
  if (stats.isBlockDevice()) return 'block-device';
  if (stats.isDirectory()) return 'directory';
  return 'file';
}

/** The libuv stream behind a net.Socket (Node's own `_handle`): reading is stopped and restarted through it. */
interface StreamHandle {
  fd?: number;
  reading?: boolean;
  readStop?: () => number;
  readStart?: () => number;
}

interface MovedSocket {
  key: string;
  socket: Socket;
  handle: StreamHandle;
  meta: unknown;
  fd: number;
  buffered: Buffer;
  wasFlowing: boolean | null;
}

/**
 * Given to each onHandoff handler of the old generation, once per upgrade
 * attempt, after the new generation has started and before it is ready.
 */
export class Handoff {
  /** The new generation's number. */
  readonly generation: number;
  /** The new generation's pid. */
  readonly childPid: number;
  /** Resolves with 'committed' (the new generation owns what was handed over) or 'failed' (this one keeps it). */
  readonly outcome: Promise<'committed' | 'failed'>;
  /** @internal */
  value: { encoding: 'json' | 'buffer'; bytes: Buffer } | undefined;
  /** @internal */
  readonly files = new Map<string, { fd: number; type: string }>();
  /** @internal */
  readonly sockets = new Map<string, MovedSocket>();
  readonly #maxBytes: number;
  /** @internal */
  settle!: (outcome: 'committed' | 'failed') => void;

  /** @internal */
  constructor(generation: number, childPid: number, maxBytes: number) {
    this.generation = generation;
    this.childPid = childPid;
    this.#maxBytes = maxBytes;
    this.outcome = new Promise((resolve) => (this.settle = resolve));
  }

  /**
   * The state to hand over: a JSON value, or a Buffer (passed as it is). A later
   * call replaces an earlier one.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_HANDOFF when it is larger than `maxHandoffBytes`
   * or cannot be serialised (the upgrade then fails; this generation keeps serving).
   */
  state(value: unknown): void {
    let bytes: Buffer;
    let encoding: 'json' | 'buffer' = 'json';
    if (Buffer.isBuffer(value) || value instanceof Uint8Array) {
      bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
      encoding = 'buffer';
    } else {
      let json: string | undefined;
      try {
        json = JSON.stringify(value);
      } catch (err) {
        throw handoffError(`the hand-over state cannot be serialised as JSON: ${(err as Error).message}`, err);
      }
      if (json === undefined) throw handoffError('the hand-over state cannot be serialised as JSON (undefined, a function or a symbol)');
      bytes = Buffer.from(json, 'utf8');
    }
    if (bytes.length > this.#maxBytes) throw handoffError(`the hand-over state is ${bytes.length} bytes, more than maxHandoffBytes (${this.#maxBytes})`);
    this.value = { encoding, bytes };
  }

  /** Hand over a file (any fd: an open log, a memfd, an eventfd). This generation keeps its own fd. */
  file(key: string, file: number | FileHandle): void {
    checkKey(key, this.files.has(key) || this.sockets.has(key));
    const fd = typeof file === 'number' ? file : file.fd;
    if (!Number.isInteger(fd) || fd < 0) throw handoffError(`file "${key}": not an open fd`);
    let stats: Stats;
    try {
      stats = fstatSync(fd);
    } catch (err) {
      throw handoffError(`file "${key}": fd ${fd} is not open (${(err as NodeJS.ErrnoException).code})`, err);
    }
    this.files.set(key, { fd, type: fileType(stats) });
  }

  /**
   * Move a live connection (TCP or Unix stream) to the new generation: call it
   * at a message boundary. It waits for what was written to be flushed, stops
   * reading, and takes what was read but not consumed; the new generation gets a
   * socket on the same connection with those bytes first. At commit this
   * generation's socket object is destroyed (the connection lives on over
   * there); if the upgrade fails it resumes where it stopped.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_HANDOFF for a TLS socket, a closed one, or one that cannot be moved.
   */
  async socket(key: string, socket: Socket, options: HandoffSocketOptions = {}): Promise<void> {
    checkKey(key, this.files.has(key) || this.sockets.has(key));
    if ((socket as { encrypted?: boolean }).encrypted) {
      throw handoffError(`socket "${key}": a TLS socket cannot be moved (its session state lives in this process); let it drain instead`);
    }
    if (socket.destroyed || socket.readableEnded || socket.writableEnded) throw handoffError(`socket "${key}" is closed or closing`);
    let meta: string;
    try {
      meta = JSON.stringify(options.meta ?? null);
    } catch (err) {
      throw handoffError(`socket "${key}": its meta cannot be serialised as JSON`, err);
    }
    if (socket.writableLength > 0) await new Promise((resolve) => socket.once('drain', resolve));
    const handle = (socket as unknown as { _handle?: StreamHandle })._handle;
    if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function' || typeof handle.readStart !== 'function') {
      throw handoffError(`socket "${key}" has no fd that can be moved`);
    }
    // In one synchronous step: no read can come in between. read() may restart
    // reading (to refill the buffer); readStop() after it stops it again.
    const wasFlowing = socket.readableFlowing;
    socket.pause();
    const chunks: Buffer[] = [];
    for (let chunk = socket.read() as Buffer | string | null; chunk !== null; chunk = socket.read() as Buffer | string | null) {
      chunks.push(typeof chunk === 'string' ? Buffer.from(chunk, socket.readableEncoding ?? 'utf8') : chunk);
    }
    handle.readStop();
    // As Node does when it stops reading itself: a later resume() starts it again.
    handle.reading = false;
    this.sockets.set(key, { key, socket, handle, meta: JSON.parse(meta) as unknown, fd: handle.fd, buffered: Buffer.concat(chunks), wasFlowing });
  }
}

function checkKey(key: string, taken: boolean): void {
  if (typeof key !== 'string' || key === '' || key.length > 1024) throw handoffError('a hand-over key must be a non-empty string of at most 1024 characters');
  if (taken) throw handoffError(`the hand-over key "${key}" is used twice`);
}

/** The old generation's side: run the handlers, send, then commit or resume. */
export class HandoffSender {
  readonly #generation: number;
  readonly #maxBytes: number;
  #handoff: Handoff | undefined;

  constructor(generation: number, maxBytes: number) {
    this.#generation = generation;
    this.#maxBytes = maxBytes;
  }

  /** True once the handlers ran (something may have been handed over). */
  get started(): boolean {
    return this.#handoff !== undefined;
  }

  /** Run every handler, then send what they gave; resolves with what was sent. */
  async run(handlers: readonly HandoffHandler[], channel: HandoffChannel, childPid: number): Promise<HandoffSummary> {
    const handoff = new Handoff(this.#generation, childPid, this.#maxBytes);
    this.#handoff = handoff;
    for (const handler of handlers) await handler(handoff);
    if (handoff.value) {
      const { bytes, encoding } = handoff.value;
      for (let at = 0; at === 0 || at < bytes.length; at += MAX_FRAME_PAYLOAD) {
        const chunk = bytes.subarray(at, at + MAX_FRAME_PAYLOAD);
        // total: the receiver assembles the state in one buffer of that size as it arrives.
        await channel.send({ t: 'state', encoding, total: bytes.length, last: at + MAX_FRAME_PAYLOAD >= bytes.length }, chunk);
      }
    }
    for (const [key, { fd, type }] of handoff.files) await channel.send({ t: 'file', key, type }, undefined, [fd]);
    for (const moved of handoff.sockets.values()) {
      const first = moved.buffered.subarray(0, MAX_FRAME_PAYLOAD);
      await channel.send({ t: 'socket', key: moved.key, meta: moved.meta, buffered: moved.buffered.length }, first, [moved.fd]);
      for (let at = first.length; at < moved.buffered.length; at += MAX_FRAME_PAYLOAD) {
        await channel.send({ t: 'socket-data', key: moved.key }, moved.buffered.subarray(at, at + MAX_FRAME_PAYLOAD));
      }
    }
    const summary = { state: handoff.value !== undefined, files: handoff.files.size, sockets: handoff.sockets.size };
    await channel.send({ t: 'end', ...summary });
    return summary;
  }

  /** The new generation owns it all now: this generation's moved socket objects go (their connections do not). */
  commit(): void {
    if (!this.#handoff) return;
    for (const { socket } of this.#handoff.sockets.values()) socket.destroy();
    this.#handoff.settle('committed');
  }

  /** The upgrade failed (or the child takes no hand-over): every moved socket resumes where it stopped. */
  abort(): void {
    if (!this.#handoff) return;
    for (const moved of this.#handoff.sockets.values()) {
      const { socket, handle, buffered, wasFlowing } = moved;
      if (socket.destroyed) continue;
      if (buffered.length > 0) socket.unshift(buffered);
      // Restart reading the way it was stopped: the stream may be waiting for a
      // read it asked for before the stop, and would never ask again.
      handle.reading = true;
      handle.readStart!();
      if (wasFlowing) socket.resume();
    }
    this.#handoff.settle('failed');
  }
}

/**
 * The new generation's side: collect the hand-over, verify it, give it to the
 * application. Whatever the sender does, no fd that arrives is left open unseen:
 * one on a frame that carries none (state, socket-data, end, a type this version
 * does not know) or after the hand-over is over is closed at once; a key given
 * twice, or a socket's unread bytes said to exceed maxHandoffBytes (or what was
 * said), fails the hand-over with ERR_ECDYSIS_HANDOFF, and a failed hand-over
 * closes everything that had arrived.
 */
export class HandoffReceiver {
  #done: Promise<Inherited>;
  #summary: HandoffSummary = { state: false, files: 0, sockets: 0 };
  #claimed = false;
  #arrived = false;
  #inherited: Inherited | undefined;

  constructor(channel: HandoffChannel, announced: boolean, maxBytes: number, onFrame: (frame: Frame) => boolean, onClose: () => void) {
    // The state as it arrives: one buffer of the announced total (so the bytes
    // are held once), or chunks from a sender that announced none.
    let assembled: Buffer | undefined;
    const state: Buffer[] = [];
    let stateBytes = 0;
    let encoding: 'json' | 'buffer' = 'json';
    let stateDone = false;
    const files = new Map<string, number>();
    const sockets = new Map<string, { socket: Socket; meta: unknown }>();
    // Sockets whose unconsumed bytes come in several frames: created once all are here.
    const filling = new Map<string, { fd: number; meta: unknown; chunks: Buffer[]; left: number }>();
    /**
     * A Node socket on the moved connection. It starts reading at once, but what
     * the old generation read and nobody consumed goes first (unshift), and no
     * 'data' flows before the application listens.
     */
    const adopt = (key: string, arriving: { fd: number; meta: unknown; chunks: Buffer[] }) => {
      let socket: Socket;
      try {
        socket = new Socket({ fd: arriving.fd, readable: true, writable: true });
      } catch (err) {
        closeQuietly(arriving.fd);
        debug('socket "%s" could not be adopted: %s', key, (err as Error).message);
        return;
      }
      const buffered = Buffer.concat(arriving.chunks);
      if (buffered.length > 0) socket.unshift(buffered);
      sockets.set(key, { socket, meta: arriving.meta });
    };
    // The handlers below stay installed for the life of the channel (it carries
    // messages too): they reach the promise only through `settle`, dropped once
    // used, so that a settled hand-over is not kept alive by them.
    let settle: { resolve: (inherited: Inherited) => void; reject: (error: Error) => void } | undefined;
    this.#done = new Promise<Inherited>((resolve, reject) => (settle = { resolve, reject }));
    const resolve = (inherited: Inherited) => {
      const pending = settle;
      settle = undefined;
      pending?.resolve(inherited);
    };
    const fail = (error: EcdysisError, fds: number[] = []) => {
      for (const fd of fds) closeQuietly(fd);
      const pending = settle;
      if (!pending) return;
      settle = undefined;
      // Nothing of a broken hand-over reaches the application: what arrived is let go.
      for (const fd of files.values()) closeQuietly(fd);
      for (const { socket } of sockets.values()) socket.destroy();
      for (const { fd } of filling.values()) closeQuietly(fd);
      files.clear();
      sockets.clear();
      filling.clear();
      pending.reject(error);
    };
    const keyTaken = (key: string) => files.has(key) || sockets.has(key) || filling.has(key);
    if (!announced) {
      this.#inherited = { state: undefined, files, sockets };
      this.#arrived = true;
      resolve(this.#inherited);
    }
    channel.receive(
      (frame) => {
        if (onFrame(frame)) return; // a channel message, not the hand-over
        const { header, payload, fds } = frame;
        if (!settle) {
          // The hand-over is over (complete, failed, or never announced): nothing more is taken.
          for (const fd of fds) closeQuietly(fd);
          return void debug('hand-over channel: frame "%s" after the hand-over ignored', header.t);
        }
        // Only file and socket frames carry an fd: one that rides on any other frame is closed at once.
        if (header.t !== 'file' && header.t !== 'socket') for (const fd of fds.splice(0)) closeQuietly(fd);
        switch (header.t) {
          case 'state': {
            const total = header.total;
            if (typeof total === 'number' && Number.isInteger(total) && total >= 0) {
              if (total > maxBytes) return fail(handoffError(`the hand-over state is larger than maxHandoffBytes (${maxBytes})`), fds);
              assembled ??= Buffer.allocUnsafe(total);
              if (assembled.length !== total || stateBytes + payload.length > total) return fail(handoffError('the hand-over state is larger than it said'), fds);
              payload.copy(assembled, stateBytes);
            } else {
              state.push(payload);
            }
            stateBytes += payload.length;
            if (stateBytes > maxBytes) return fail(handoffError(`the hand-over state is larger than maxHandoffBytes (${maxBytes})`), fds);
            encoding = header.encoding === 'buffer' ? 'buffer' : 'json';
            if (header.last === true) stateDone = true;
            return;
          }
          case 'file': {
            const key = String(header.key);
            const fd = onlyFd(fds);
            if (fd === undefined) return fail(handoffError(`file "${key}" arrived without its fd`));
            let type: string;
            try {
              type = fileType(fstatSync(fd));
            } catch (err) {
              return fail(handoffError(`file "${key}": the fd that arrived is unusable`, err), [fd]);
            }
            if (type !== header.type) return fail(handoffError(`file "${key}" was a ${String(header.type)} and arrived as a ${type}`), [fd]);
            if (keyTaken(key)) return fail(handoffError(`the hand-over key "${key}" arrived twice`), [fd]);
            files.set(key, fd);
            return;
          }
          case 'socket': {
            const key = String(header.key);
            const fd = onlyFd(fds);
            if (fd === undefined) return fail(handoffError(`socket "${key}" arrived without its fd`));
            try {
              if (!fstatSync(fd).isSocket()) throw new Error('not a socket');
            } catch (err) {
              return fail(handoffError(`socket "${key}": the fd that arrived is not a connection`, err), [fd]);
            }
            if (keyTaken(key)) return fail(handoffError(`the hand-over key "${key}" arrived twice`), [fd]);
            // What the old generation read and nobody consumed: bounded like the state.
            const buffered = header.buffered;
            if (typeof buffered !== 'number' || !Number.isSafeInteger(buffered) || buffered < 0 || buffered > maxBytes) {
              return fail(handoffError(`socket "${key}" says it carries ${String(buffered)} unread bytes; at most maxHandoffBytes (${maxBytes}) may come`), [fd]);
            }
            if (payload.length > buffered) return fail(handoffError(`socket "${key}" carries more unread bytes than it said`), [fd]);
            const arriving = { fd, meta: header.meta, chunks: [payload], left: buffered - payload.length };
            if (arriving.left > 0) filling.set(key, arriving);
            else adopt(key, arriving);
            return;
          }
          case 'socket-data': {
            const key = String(header.key);
            const arriving = filling.get(key);
            if (!arriving) return fail(handoffError(`data for socket "${key}", which did not arrive`));
            if (payload.length > arriving.left) return fail(handoffError(`socket "${key}" carries more unread bytes than it said`));
            arriving.chunks.push(payload);
            arriving.left -= payload.length;
            if (arriving.left <= 0) {
              filling.delete(key);
              adopt(key, arriving);
            }
            return;
          }
          case 'end': {
            if (header.state === true && !stateDone) return fail(handoffError('the hand-over ended before its state was complete'));
            if (filling.size > 0) return fail(handoffError('the hand-over ended before every socket had arrived'));
            let value: unknown;
            if (stateDone) {
              if (assembled && stateBytes !== assembled.length) return fail(handoffError('the hand-over state ended short of the size it said'));
              const bytes = assembled ?? Buffer.concat(state);
              // Nothing of the received bytes stays referenced here but what the application gets.
              assembled = undefined;
              state.length = 0;
              try {
                value = encoding === 'buffer' ? bytes : (JSON.parse(bytes.toString('utf8')) as unknown);
              } catch (err) {
                return fail(handoffError('the hand-over state is not valid JSON', err));
              }
            }
            this.#summary = { state: stateDone, files: files.size, sockets: sockets.size };
            this.#inherited = { state: value, files, sockets };
            this.#arrived = true;
            debug('hand-over received: %o', this.#summary);
            return resolve(this.#inherited);
          }
          default:
            debug('hand-over channel: frame "%s" ignored', header.t);
        }
      },
      (error) => {
        onClose();
        if (!this.#arrived) fail(handoffError(`the hand-over channel closed before the hand-over ended${error ? `: ${error.message}` : ''}`, error));
      },
    );
    this.#done.catch(() => {});
    if (announced) {
      // Until the hand-over has arrived, the channel is what the process waits on.
      channel.ref();
      void this.#done.then(
        () => channel.unref(),
        () => channel.unref(),
      );
    }
  }

  /** Resolves once the whole hand-over has arrived (rejects when it broke off). */
  get done(): Promise<Inherited> {
    return this.#done;
  }

  /** What was received, for the ready frame. */
  get summary(): HandoffSummary {
    return this.#summary;
  }

  /** The application asked for what was handed over. */
  claim(): Promise<Inherited> {
    this.#claimed = true;
    return this.#done;
  }

  /**
   * At ready(): connections handed over that the application never asked for
   * would stay open unserved: they are closed, with a warning. Then the library
   * lets go of the hand-over, so that a large state lives only as long as the
   * application keeps it; inherited() from now on resolves to an empty one.
   */
  release(): void {
    const inherited = this.#inherited;
    if (!inherited) return;
    this.#inherited = undefined;
    this.#done = Promise.resolve({ state: undefined, files: new Map(), sockets: new Map() });
    if (this.#claimed || (inherited.sockets.size === 0 && inherited.files.size === 0)) return;
    process.emitWarning(
      `the previous generation handed over ${inherited.sockets.size} connection(s) and ${inherited.files.size} file(s) that this generation never asked for (ecdysis.inherited()): they are closed`,
      { code: 'ECDYSIS_HANDOFF_UNCLAIMED' },
    );
    for (const { socket } of inherited.sockets.values()) socket.destroy();
    for (const fd of inherited.files.values()) closeQuietly(fd);
  }
}
