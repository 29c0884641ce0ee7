/**
 * Hand-over beyond listeners (protocol version 4), the new generation's side:
 * what the old generation sends (handoff-send.ts) arrives on the hand-over
 * channel and is given to the application once whole and verified.
 */
import { fstatSync } from 'node:fs';
import { Socket } from 'node:net';
import { debuglog } from 'node:util';
import type { EcdysisError } from '../errors.ts';
import { closeQuietly } from '../internal/native.ts';
import type { Frame, HandoffChannel } from '../wire/handoff-channel.ts';
import type { HandoffSummary } from '../wire/protocol.ts';
import { fileType, handoffError } from './handoff-send.ts';

const debug = debuglog('ecdysis');

/** What the new generation got from the old one. */
export interface Inherited {
  /** The value the old generation passed to `handoff.state()` (a Buffer stays a Buffer); undefined if none. */
  state: unknown;
  /** Files by key: fds this process now owns (close-on-exec). */
  files: Map<string, number>;
  /** Live connections by key, with the bytes read but not consumed before the move delivered first. */
  sockets: Map<string, { socket: Socket; meta: unknown }>;
}

/** The one fd a file or socket frame carries; any extra ones are closed. */
function onlyFd(fds: readonly number[]): number | undefined {
  const [fd, ...extra] = fds;
  for (const unexpected of extra) closeQuietly(unexpected);
  return fd;
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

  /**
   * `fromPeer`: a worker's hand-over from the old worker of its index (version
   * 8). A channel that closes before anything arrived there means nobody will
   * send (the old worker, or both primaries, are gone): an empty hand-over, not
   * a failure, so that a new group whose predecessor died still starts.
   */
  constructor(channel: HandoffChannel, announced: boolean, maxBytes: number, onFrame: (frame: Frame) => boolean, onClose: () => void, fromPeer = false) {
    let anything = false;
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
        anything = true;
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
          case 'abort':
            // Version 8: the sender failed (a handler threw, a state too large): it keeps everything.
            return fail(handoffError(`the previous generation's hand-over failed: ${String(header.message).slice(0, 1024)}`));
          case 'end': {
            if (header.state === true && !stateDone) return fail(handoffError('the hand-over ended before its state was complete'));
            // What the sender says it sent, against what arrived and was adopted (a socket Node could not adopt is missing).
            const said = { files: header.files, sockets: header.sockets };
            if ((typeof said.files === 'number' && said.files !== files.size) || (typeof said.sockets === 'number' && said.sockets !== sockets.size)) {
              return fail(handoffError(`the hand-over says ${String(said.files)} file(s) and ${String(said.sockets)} connection(s); ${files.size} and ${sockets.size} arrived`));
            }
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
        if (fromPeer && !anything && !this.#arrived) {
          this.#inherited = { state: undefined, files, sockets };
          this.#arrived = true;
          debug('hand-over channel closed before anything arrived: nothing was handed over');
          return resolve(this.#inherited);
        }
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
