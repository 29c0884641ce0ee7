/**
 * The lifecycle events of one generation: stamped, mirrored to
 * diagnostics_channel, and delivered to every events() subscriber.
 */
import { channel } from 'node:diagnostics_channel';
import type { Observable, Subscriber } from 'rxjs';
import { lazyObservable } from './rx.ts';
import type { EcdysisEvent, EventPayload } from './lifecycle.ts';

const lifecycleChannel = channel('ecdysis:lifecycle');

export class LifecycleEvents {
  readonly #generation: number;
  readonly #observers = new Set<Subscriber<EcdysisEvent>>();
  #completed = false;

  constructor(generation: number) {
    this.#generation = generation;
  }

  emit(payload: EventPayload): void {
    const event = this.#stamp(payload);
    if (lifecycleChannel.hasSubscribers) lifecycleChannel.publish(event);
    // A copy: a subscriber may unsubscribe (or subscribe) while it is called.
    for (const observer of [...this.#observers]) observer.next(event);
  }

  /** A cold Observable: `first()` (the current state) to each new subscriber, then every event. */
  observable(first: () => EventPayload): Observable<EcdysisEvent> {
    return lazyObservable<EcdysisEvent>((subscriber) => {
      subscriber.next(this.#stamp(first()));
      if (this.#completed) return subscriber.complete();
      this.#observers.add(subscriber);
      return () => this.#observers.delete(subscriber);
    });
  }

  /** The generation is done: every subscriber completes, later ones at once. */
  complete(): void {
    this.#completed = true;
    for (const observer of [...this.#observers]) observer.complete();
    this.#observers.clear();
  }

  #stamp(payload: EventPayload): EcdysisEvent {
    return { ...payload, time: Date.now(), generation: this.#generation, pid: process.pid } as EcdysisEvent;
  }
}
