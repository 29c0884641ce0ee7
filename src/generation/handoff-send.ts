/**
 * Hand-over beyond listeners (protocol version 4), the old generation's side:
 * state, files and live connections move to the new one over the hand-over
 * channel, transactionally: the old generation gives up nothing until the new
 * one commits; if it fails, every paused connection resumes where it stopped.
 * The new generation's side is handoff-receive.ts.
 */
import { fstatSync, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Socket } from 'node:net';
import { EcdysisError } from '../errors.ts';
import { closeQuietly } from '../internal/native.ts';
import { HandoffChannel, MAX_FRAME_PAYLOAD } from '../wire/handoff-channel.ts';
import type { HandoffSummary } from '../wire/protocol.ts';

export function handoffError(message: string, cause?: unknown): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_HANDOFF', message, cause === undefined ? {} : { cause });
}

/** A function the old generation registers with onHandoff(). */
export type HandoffHandler = (handoff: Handoff) => unknown;

export interface HandoffSocketOptions {
  /** Anything JSON can carry, given to the new generation with the socket (a session id...). */
  meta?: unknown;
}

/** The kind of file an fd is, as the two generations compare it. */
export function fileType(stats: Stats): string {
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
  #resolve!: (outcome: 'committed' | 'failed') => void;
  #over = false;

  /** @internal */
  constructor(generation: number, childPid: number, maxBytes: number) {
    this.generation = generation;
    this.childPid = childPid;
    this.#maxBytes = maxBytes;
    this.outcome = new Promise((resolve) => (this.#resolve = resolve));
  }

  /** @internal The upgrade is decided: nothing more may be handed over. */
  settle(outcome: 'committed' | 'failed'): void {
    this.#over = true;
    this.#resolve(outcome);
  }

  /**
   * A handler still running once the upgrade is decided (it failed meanwhile)
   * must not pause a connection that nobody would resume.
   */
  #checkOpen(): void {
    if (this.#over) throw handoffError(`the upgrade to generation ${this.generation} is over: nothing more can be handed over`);
  }

  /**
   * The state to hand over: a JSON value, or a Buffer (passed as it is). A later
   * call replaces an earlier one.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_HANDOFF when it is larger than `maxHandoffBytes`
   * or cannot be serialised (the upgrade then fails; this generation keeps serving).
   */
  state(value: unknown): void {
    this.#checkOpen();
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
    this.#checkOpen();
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
    this.#checkOpen();
    if (socket.writableLength > 0) await new Promise((resolve) => socket.once('drain', resolve));
    this.#checkOpen();
    if (socket.destroyed) throw handoffError(`socket "${key}" closed while its writes were flushed`);
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

/**
 * Nothing to hand over on a channel the sender got but cannot use (a new
 * worker whose index has no old worker serving): an empty hand-over, so that
 * the receiver starts at once. Takes ownership of `fd`.
 */
export function handOverNothing(fd: number): void {
  const channel = new HandoffChannel(fd);
  channel.receive(
    (frame) => frame.fds.forEach(closeQuietly),
    () => {},
  );
  channel.send({ t: 'end', state: false, files: 0, sockets: 0 }).then(
    () => channel.close(),
    () => channel.close(),
  );
}

/** The old generation's side: run the handlers, send, then commit or resume. */
export class HandoffSender {
  readonly #generation: number;
  readonly #maxBytes: number;
  #handoff: Handoff | undefined;
  /** Committed or aborted: once only. */
  #decided = false;

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
    if (this.#decided) throw handoffError('the upgrade was decided before the onHandoff handlers returned: nothing was sent');
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
    if (!this.#handoff || this.#decided) return;
    this.#decided = true;
    for (const { socket } of this.#handoff.sockets.values()) socket.destroy();
    this.#handoff.settle('committed');
  }

  /** The upgrade failed (or the child takes no hand-over): every moved socket resumes where it stopped. */
  abort(): void {
    if (!this.#handoff || this.#decided) return;
    this.#decided = true;
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
