/**
 * What every listener kind shares: the lifecycle the state machine drives
 * (start, pause, resume, prepareStop, stop), serving on demand through a Feed,
 * and Node objects that only ever get a duplicate of the registry's fd (in
 * local mode, where there is none, the socket Node created: local-socket.ts).
 */
import { debuglog } from 'node:util';
import { native } from '../internal/native.ts';
import type { SocketKind } from '../wire/sockets.ts';
import { Feed } from './feed.ts';
import type { Drainable, Listener } from './listener.ts';

const debug = debuglog('ecdysis');

/** How long to wait before trying again when the process is out of fds. */
const FD_RETRY_MS = 100;

export interface ListenerConfig {
  key: string;
  /**
   * The registry's fd; the listener only ever gives Node duplicates of it.
   * Undefined in local mode: Node holds the socket (local-socket.ts), and the
   * listener attaches to it instead.
   */
  fd: number | undefined;
  inherited: boolean;
  stopOnShutdown: boolean;
}

export abstract class BaseListener<T> implements Listener {
  abstract readonly kind: SocketKind;
  /** The key under which the socket is handed to the next generation. */
  readonly key: string;
  /** False when this listener keeps serving through a stop (never through an upgrade). */
  readonly stopOnShutdown: boolean;
  /** True when the socket came from the previous generation. */
  readonly inherited: boolean;
  /**
   * Resolves when this generation has stopped serving on this listener for
   * good (a stop, or the end of the generation after an upgrade).
   */
  readonly closed: Promise<void>;

  /** @internal */
  protected readonly feed: Feed<T>;
  readonly #fd: number | undefined;
  #started = false;
  #paused = false;
  #stopped = false;
  #shuttingDown = false;
  #serving = false;
  #retryTimer: NodeJS.Timeout | undefined;
  #discarded = 0;
  #resolveClosed!: () => void;

  protected constructor(config: ListenerConfig, maxPending: number) {
    this.key = config.key;
    this.#fd = config.fd;
    this.inherited = config.inherited;
    this.stopOnShutdown = config.stopOnShutdown;
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
    this.feed = new Feed<T>({
      maxPending,
      onDemand: () => this.sync(),
      discard: (item) => {
        this.#discarded++;
        this.discardItem(item);
      },
    });
  }

  /** True while this generation is accepting (or reading) on this listener. */
  get accepting(): boolean {
    return this.#serving;
  }

  /** @internal The generation is ready: serve once someone listens. */
  start(): void {
    this.#started = true;
    this.sync();
  }

  /**
   * @internal Shutdown has begun but this listener still takes what the kernel
   * already queued: served protocols start closing their connections.
   */
  prepareStop(): void {
    this.#shuttingDown = true;
    this.onShuttingDown();
  }

  /**
   * @internal The upgrade committed: stop serving, keep the consumers (the
   * service may come back here).
   */
  pause(): void {
    if (this.#stopped || this.#paused) return;
    this.prepareStop();
    this.#paused = true;
    this.sync();
  }

  /** @internal The successor died: serve again. */
  resume(): void {
    if (this.#stopped || !this.#paused) return;
    this.#paused = false;
    this.#shuttingDown = false;
    this.sync();
  }

  /** @internal This generation stops serving on this listener, for good. */
  stop(): void {
    if (this.#stopped) return;
    this.prepareStop();
    this.#stopped = true;
    this.sync();
    this.feed.end();
    this.onStopped();
    this.#resolveClosed();
  }

  /** @internal */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** @internal Items produced but destroyed because no consumer was left to take them. */
  get discarded(): number {
    return this.#discarded;
  }

  /** @internal The generation is done: release what outlived the stop (a datagram sender). */
  dispose(): void {}

  /** @internal Connections handed out and still open (none for datagram sockets). */
  activeConnections(): Drainable[] {
    return [];
  }

  /** @internal How many, without copying them (status, metrics, a worker's reports): none here. */
  get connectionCount(): number {
    return 0;
  }

  /** @internal Told of each connection handed out as it closes, while set (the drain's). */
  onConnectionClosed: ((connection: Drainable) => void) | undefined = undefined;

  /** True once shutdown began (until a take-back). */
  protected get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /**
   * Start accepting or reading on `fd`, a close-on-exec duplicate the listener
   * now owns; undefined in local mode (attach to the socket Node holds).
   */
  protected abstract startServing(fd: number | undefined): void;
  /** Stop accepting or reading; the duplicate is closed (local mode: detached), the registry's fd keeps the socket. */
  protected abstract stopServing(): void;
  /** An item no consumer will ever take. */
  protected abstract discardItem(item: T): void;
  /** Served protocols start closing their connections. */
  protected onShuttingDown(): void {}
  /** The listener is stopped for good. */
  protected onStopped(): void {}

  /** Serve on demand: while the generation serves here and a consumer can take an item. */
  protected sync(): void {
    const wanted = this.#started && !this.#paused && !this.#stopped && this.feed.wanted;
    if (wanted && !this.#serving) {
      if (this.#retryTimer) return;
      if (this.#fd === undefined) {
        this.#serving = true;
        return this.startServing(undefined);
      }
      let fd: number;
      try {
        fd = native().dupCloexec(this.#fd);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'EMFILE' && code !== 'ENFILE') return this.fail(err as Error);
        // Out of fds for a moment: try again soon rather than give up on the listener.
        debug('listener %s: %s, retrying', this.key, (err as Error).message);
        this.#retryTimer = setTimeout(() => {
          this.#retryTimer = undefined;
          this.sync();
        }, FD_RETRY_MS);
        return;
      }
      this.#serving = true;
      this.startServing(fd);
    } else if (!wanted && this.#serving) {
      this.#serving = false;
      this.stopServing();
    }
  }

  /** The listener cannot serve at all: every consumer gets the error. */
  protected fail(err: Error): void {
    debug('listener %s failed: %s', this.key, err.message);
    if (this.#serving) {
      this.#serving = false;
      this.stopServing();
    }
    this.feed.fail(err);
  }
}
