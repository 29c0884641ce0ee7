/**
 * Items (connections, datagrams, messages) handed to consumers: rxjs
 * subscribers and async iterators, each item to exactly one consumer, in turn.
 * The producer asks `wanted` whether to keep producing (accepting, reading):
 * only while a subscriber is attached, an iterator waits in next(), or busy
 * iterators have fewer than `maxPending` items queued. Otherwise items wait in
 * the kernel, where nothing is lost if this generation goes away.
 */
import type { Observable } from 'rxjs';
import { lazyObservable, type Sink } from '../internal/rx.ts';

export interface IterateOptions {
  /** Ends the iteration: a pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
}

interface Waiter<T> {
  owner: object;
  resolve: (result: IteratorResult<T>) => void;
  reject: (err: unknown) => void;
}

export interface FeedOptions<T> {
  /** Items produced ahead for busy iterators; beyond that, `wanted` is false. */
  maxPending: number;
  /** Demand may have changed: the producer checks `wanted` (called synchronously). */
  onDemand: () => void;
  /** An item produced that no consumer will ever take (the feed ended). */
  discard: (item: T) => void;
}

export class Feed<T> {
  readonly #options: FeedOptions<T>;
  /** An array, not a Set: delivery indexes it for round robin. */
  readonly #observers: Sink<T>[] = [];
  readonly #waiters: Waiter<T>[] = [];
  readonly #pending: T[] = [];
  #iterators = 0;
  #roundRobin = 0;
  #ended = false;
  #error: Error | undefined;

  constructor(options: FeedOptions<T>) {
    this.#options = options;
  }

  /** True while a consumer can take an item now or soon. */
  get wanted(): boolean {
    if (this.#ended || this.#error) return false;
    return this.#observers.length > 0 || this.#waiters.length > 0 || (this.#iterators > 0 && this.#pending.length < this.#options.maxPending);
  }

  /** A cold Observable of the items: subscribing adds demand, unsubscribing removes it; completes at end(). */
  observable(): Observable<T> {
    return lazyObservable<T>((subscriber) => this.subscribe(subscriber));
  }

  /**
   * The same without rxjs (serve(), the library's own consumers): `sink` takes
   * items until the returned function is called, or the feed ends.
   */
  subscribe(sink: Sink<T>): () => void {
    if (this.#error) {
      sink.error(this.#error);
      return () => {};
    }
    while (this.#pending.length > 0 && !sink.closed) sink.next(this.#pending.shift()!);
    if (this.#ended) {
      sink.complete();
      return () => {};
    }
    this.#observers.push(sink);
    this.#options.onDemand();
    return () => {
      const index = this.#observers.indexOf(sink);
      if (index === -1) return;
      this.#observers.splice(index, 1);
      this.#options.onDemand();
    };
  }

  /** An async iterator of the items that ends at end(); `break` (or `return()`) releases it. */
  iterate(options: IterateOptions = {}): AsyncIterableIterator<T> {
    const owner = {};
    const { signal } = options;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      this.#iterators--;
      signal?.removeEventListener('abort', onAbort);
      for (let i = this.#waiters.length - 1; i >= 0; i--) {
        const waiter = this.#waiters[i]!;
        if (waiter.owner !== owner) continue;
        this.#waiters.splice(i, 1);
        if (signal?.aborted) waiter.reject(signal.reason);
        else waiter.resolve({ value: undefined, done: true });
      }
      if (this.#ended) this.#discardPending();
      this.#options.onDemand();
    };
    const onAbort = () => finish();
    this.#iterators++;
    if (signal?.aborted) finish();
    else signal?.addEventListener('abort', onAbort, { once: true });
    this.#options.onDemand();

    const iterator: AsyncIterableIterator<T> = {
      next: () => {
        if (finished) {
          return signal?.aborted ? Promise.reject(signal.reason) : Promise.resolve({ value: undefined, done: true });
        }
        if (this.#pending.length > 0) {
          const item = this.#pending.shift()!;
          this.#options.onDemand(); // room in the queue again: produce again if it had stopped
          return Promise.resolve({ value: item, done: false });
        }
        if (this.#error) {
          const error = this.#error;
          finish();
          return Promise.reject(error);
        }
        if (this.#ended) {
          finish();
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => this.#waiters.push({ owner, resolve, reject }));
      },
      return: () => {
        finish();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  /**
   * A new item: round robin over the subscribers plus, as one more slot, the
   * iterators waiting in next(); with nobody able to take it now, it is queued
   * for an iterator.
   */
  push(item: T): void {
    const slots = this.#observers.length + (this.#waiters.length > 0 ? 1 : 0);
    if (slots === 0) {
      this.#pending.push(item);
      if (this.#ended) this.#discardPending();
      return this.#options.onDemand();
    }
    const pick = this.#roundRobin++ % slots;
    if (pick === this.#observers.length) return this.#waiters.shift()!.resolve({ value: item, done: false });
    this.#observers[pick]!.next(item);
  }

  /** No more items: iterators end once they have taken what is queued, subscribers complete. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
    for (const observer of this.#observers.splice(0)) observer.complete();
    this.#discardPending();
  }

  /** The producer failed for good: every consumer gets the error. */
  fail(err: Error): void {
    this.#error = err;
    for (const waiter of this.#waiters.splice(0)) waiter.reject(err);
    for (const observer of this.#observers.splice(0)) observer.error(err);
  }

  /** Once ended, queued items no iterator will ever take are discarded. */
  #discardPending(): void {
    if (this.#iterators > 0) return;
    for (const item of this.#pending.splice(0)) this.#options.discard(item);
  }
}
