/**
 * ecdysis.channel(): JSON messages between two generations while both run
 * (to forward late work, coordinate a cache warm-up...), over the hand-over
 * channel; closed when either generation is gone.
 */
import type { Observable } from 'rxjs';
import { EcdysisError } from '../errors.ts';
import { Feed, type IterateOptions } from '../listeners/feed.ts';
import { MAX_FRAME_PAYLOAD, type Frame, type HandoffChannel } from '../wire/handoff-channel.ts';
import { closeQuietly } from '../internal/native.ts';

/** Messages read ahead for a busy iterator. */
const MAX_PENDING = 1024;

export class GenerationChannel implements AsyncIterable<unknown> {
  /** 'parent': the previous generation; 'successor': the next one; undefined: none (closed). */
  readonly peer: 'parent' | 'successor' | undefined;
  readonly #channel: HandoffChannel | undefined;
  readonly #feed = new Feed<unknown>({ maxPending: MAX_PENDING, onDemand: () => {}, discard: () => {} });

  /** @internal */
  constructor(channel: HandoffChannel | undefined, peer: 'parent' | 'successor' | undefined) {
    this.#channel = channel;
    this.peer = channel && !channel.closed ? peer : undefined;
    if (!this.peer) this.#feed.end();
  }

  /** @internal A frame that arrived on the hand-over channel: true when it was a message (taken here). */
  take(frame: Frame): boolean {
    if (frame.header.t !== 'message') return false;
    for (const fd of frame.fds) closeQuietly(fd);
    try {
      this.#feed.push(JSON.parse(frame.payload.toString('utf8')) as unknown);
    } catch {
      // not JSON: dropped
    }
    return true;
  }

  /** @internal The other generation is gone. */
  end(): void {
    this.#feed.end();
  }

  /** True while the other generation can be reached. */
  get open(): boolean {
    return this.peer !== undefined && !this.#channel!.closed;
  }

  /**
   * Send a JSON value to the other generation; resolves once it is queued.
   *
   * @throws {EcdysisError} ERR_ECDYSIS_HANDOFF when the channel is closed or the message larger than 60 KiB.
   */
  async send(message: unknown): Promise<void> {
    if (!this.open) throw new EcdysisError('ERR_ECDYSIS_HANDOFF', 'no other generation is reachable on the channel');
    const payload = Buffer.from(JSON.stringify(message) ?? 'null', 'utf8');
    if (payload.length > MAX_FRAME_PAYLOAD) throw new EcdysisError('ERR_ECDYSIS_HANDOFF', `a channel message of ${payload.length} bytes; the limit is ${MAX_FRAME_PAYLOAD}`);
    await this.#channel!.send({ t: 'message' }, payload);
  }

  /** The messages from the other generation, as a cold Observable that completes when it is gone. */
  messages(): Observable<unknown> {
    return this.#feed.observable();
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<unknown> {
    return this.#feed.iterate();
  }

  iterate(options: IterateOptions = {}): AsyncIterableIterator<unknown> {
    return this.#feed.iterate(options);
  }
}
