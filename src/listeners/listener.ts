/**
 * What the state machine asks of every listener, whatever its kind: accept (or
 * read) from ready() on, pause when an upgrade commits, resume on a take-back,
 * stop for good, and hand the connections it gave out to the drain.
 */
import type { SocketKind } from '../wire/sockets.ts';

/** A connection the drain waits for: its listener tells when it closes, and it can be destroyed. */
export interface Drainable {
  readonly destroyed: boolean;
  destroy(): void;
}

export interface Listener {
  /** The key under which the socket is handed to the next generation. */
  readonly key: string;
  readonly kind: SocketKind;
  /** False when this listener keeps serving through a stop (never through an upgrade). */
  readonly stopOnShutdown: boolean;
  /** True when the socket came from the previous generation. */
  readonly inherited: boolean;
  /** True while this generation accepts (or reads) on it. */
  readonly accepting: boolean;
  /** Resolves when this generation has stopped serving on it for good. */
  readonly closed: Promise<void>;
  /** @internal The generation is ready: serve once someone listens. */
  start(): void;
  /** @internal A full stop has begun: served protocols start closing their connections. */
  prepareStop(): void;
  /** @internal An upgrade committed: stop serving, keep the consumers. */
  pause(): void;
  /** @internal The successor died: serve again. */
  resume(): void;
  /** @internal Stop for good: consumers complete. */
  stop(): void;
  /** @internal The generation is done: release what outlived the stop. */
  dispose(): void;
  /** @internal */
  readonly stopped: boolean;
  /** @internal Connections handed out and still open. */
  activeConnections(): Drainable[];
  /** @internal How many, without copying them. */
  readonly connectionCount: number;
  /**
   * @internal Told of each connection handed out as it closes, while set (the
   * drain's): through the one 'close' listener the listener already has on each,
   * so that a drain adds nothing per connection.
   */
  onConnectionClosed: ((connection: Drainable) => void) | undefined;
  /** @internal Connections accepted but destroyed because no consumer was left to take them. */
  readonly discarded: number;
}
