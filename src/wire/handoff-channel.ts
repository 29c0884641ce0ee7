/**
 * The hand-over channel between two generations (protocol version 4): a Unix
 * seqpacket socketpair beside the control channel, driven by the addon, because
 * it carries fds (SCM_RIGHTS) and Node's sockets cannot. One message is one
 * frame: a 4-byte big-endian header length, the header (UTF-8 JSON with a string
 * `t`), then the payload; fds ride with the message.
 *
 * Parent → child:
 *   state   { t, encoding: 'json' | 'buffer', total, last }  + payload chunk
 *   file    { t, key, type }                          + 1 fd
 *   socket  { t, key, meta, buffered }                + 1 fd (+ first chunk of what was read, unconsumed)
 *   socket-data { t, key }                            + payload chunk
 *   end     { t, state, files, sockets }               the hand-over is complete
 *   abort   { t, message }                             (version 8) the sender failed: nothing more comes
 * Worker groups (version 8), on the channel between two primaries (new → old)
 * and between a primary and its worker (primary → worker):
 *   worker-handoff { t, index, pid }                   + 1 fd: the channel to new worker `index` (pid)
 *   worker-handoff-failed { t }                        primary → worker: the upgrade failed, keep it all
 * Both ways:
 *   message { t }                                     + payload: a JSON value (ecdysis.channel())
 *
 * Frames are bounded (MAX_FRAME_PAYLOAD) so that each fits a seqpacket message.
 */
import { EcdysisError } from '../errors.ts';
import { closeQuietly, native, type NativeSystemError, type PacketSocket } from '../internal/native.ts';
import { deferred } from '../internal/deferred.ts';

/** The payload of one frame: well under the default socket buffer (about 208 KiB). */
export const MAX_FRAME_PAYLOAD = 60 * 1024;
const MAX_HEADER = 16 * 1024;

export interface Frame {
  header: { t: string } & Record<string, unknown>;
  payload: Buffer;
  fds: number[];
}

function protocolError(message: string): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_PROTOCOL', `hand-over channel: ${message}`);
}

export function encodeHandoffFrame(header: Frame['header'], payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.from(JSON.stringify(header), 'utf8');
  if (head.length > MAX_HEADER) throw protocolError(`a header of ${head.length} bytes`);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(head.length, 0);
  return Buffer.concat([length, head, payload]);
}

export function decodeHandoffFrame(data: Buffer, fds: number[]): Frame {
  if (data.length < 4) throw protocolError('a frame shorter than its header length');
  const length = data.readUInt32BE(0);
  if (length > MAX_HEADER || 4 + length > data.length) throw protocolError(`a header length of ${length}`);
  let header: unknown;
  try {
    header = JSON.parse(data.subarray(4, 4 + length).toString('utf8'));
  } catch {
    throw protocolError('a header that is not JSON');
  }
  if (typeof header !== 'object' || header === null || typeof (header as { t?: unknown }).t !== 'string') throw protocolError('a header without a type');
  return { header: header as Frame['header'], payload: data.subarray(4 + length), fds };
}

/** One end of the channel: frames out with backpressure, frames in as they come. */
export class HandoffChannel {
  readonly #socket: PacketSocket;
  readonly #waiting: (() => void)[] = [];
  #closed = false;
  #whenClosed = deferred<void>();
  #onFrame: (frame: Frame) => void = () => {};
  #onClose: (error?: Error) => void = () => {};

  /** Takes ownership of `fd`. */
  constructor(fd: number) {
    this.#socket = new (native().PacketSocket)(
      fd,
      'connected',
      {
        onMessage: (data, _address, _port, fds = []) => {
          let frame: Frame;
          try {
            frame = decodeHandoffFrame(data, fds);
          } catch (err) {
            for (const received of fds) closeQuietly(received);
            return this.#close(err as Error);
          }
          this.#onFrame(frame);
        },
        onEnd: () => this.#close(),
        onError: (err: NativeSystemError) => this.#close(err),
        onDrain: () => {
          for (const wake of this.#waiting.splice(0)) wake();
        },
      },
      // The one packet socket that takes fds: files and connections handed over.
      { receiveFds: true },
    );
    // The channel never keeps a process alive on its own.
    this.#socket.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves once the channel is closed: the other end went away (after everything it sent was read), or close(). */
  get whenClosed(): Promise<void> {
    return this.#whenClosed.promise;
  }

  /** Deliver incoming frames (and the end) to these handlers; starts reading. */
  receive(onFrame: (frame: Frame) => void, onClose: (error?: Error) => void): void {
    this.#onFrame = onFrame;
    this.#onClose = onClose;
    if (!this.#closed) this.#socket.startReading();
  }

  /** Send one frame; resolves when the kernel took it or when there is room to queue more. */
  async send(header: Frame['header'], payload?: Buffer, fds: number[] = []): Promise<void> {
    if (this.#closed) throw new EcdysisError('ERR_ECDYSIS_PROTOCOL', 'the hand-over channel is closed (the other generation is gone)');
    const data = encodeHandoffFrame(header, payload);
    const room = fds.length > 0 ? this.#socket.sendWithFds(data, fds) : this.#socket.send(data);
    if (!room) await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  /** Keep the process alive while waiting on this channel (a hand-over being received). */
  ref(): void {
    if (!this.#closed) this.#socket.ref();
  }

  unref(): void {
    if (!this.#closed) this.#socket.unref();
  }

  close(): void {
    this.#close();
  }

  #close(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#socket.close();
    for (const wake of this.#waiting.splice(0)) wake();
    this.#whenClosed.resolve();
    this.#onClose(error);
  }
}
