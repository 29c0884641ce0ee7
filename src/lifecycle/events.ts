/**
 * The lifecycle events of one generation, as the application sees them:
 * their types, and their delivery (stamped, mirrored to diagnostics_channel,
 * given to every events() subscriber).
 */
import { channel } from 'node:diagnostics_channel';
import type { Observable, Subscriber } from 'rxjs';
import type { EcdysisError } from '../errors.ts';
import type { DrainResult } from '../listeners/drain.ts';
import { lazyObservable } from '../internal/rx.ts';
import type { EcdysisState, ExitMode } from './machine.ts';

export interface EventBase {
  /** Date.now() when the event was emitted. */
  time: number;
  generation: number;
  pid: number;
}

/** The lifecycle, as emitted by {@link Ecdysis.events}. */
export type EcdysisEvent = EventBase &
  (
    | { type: 'state'; state: EcdysisState; isChild: boolean; parentAlive: boolean }
    | { type: 'ready' }
    | { type: 'requested'; reason: string }
    | { type: 'refused'; reason: string; error: EcdysisError }
    | { type: 'child-spawned'; childPid: number }
    | { type: 'child-ready'; childPid: number; elapsedMs: number }
    | { type: 'child-failed'; error: EcdysisError; elapsedMs: number; handoff?: 'kept' }
    | { type: 'handoff-skipped'; reason: string }
    /** A stop with `stopDelay`: not ready any more, serving on for `delayMs`, then exiting. */
    | { type: 'lame-duck'; mode: 'stop' | 'partial-stop'; reason: string; delayMs: number }
    | { type: 'exiting'; mode: ExitMode; reason: string }
    | { type: 'successor-failed'; childPid: number; exitCode: number | null; signal: NodeJS.Signals | null; error: EcdysisError }
    /** Operator rollback: the successor asked this generation to take the service back, and it serves again. */
    | { type: 'successor-rolled-back'; childPid: number }
    | { type: 'notify-failed'; message: string; error: EcdysisError }
    | { type: 'control-refused'; uid: number; peerPid: number; reason: string }
    | { type: 'drained'; result: DrainResult }
    | { type: 'parent-exited'; parentPid: number }
    /** The previous generation's drain is over (it may still run): upgrades are no longer held back by it. */
    | { type: 'parent-drained'; parentPid: number }
    /** maxDrainingGenerations: a descendant told this draining generation to finish now. */
    | { type: 'retire-requested'; requestedBy: number }
    /** maxDrainingGenerations: this generation told an older, draining one to finish before committing. */
    | { type: 'ancestor-retired'; ancestorGeneration: number; ancestorPid: number; drained: boolean; elapsedMs: number }
    /** A primary (option `workers`): worker `index` was started (at ready(), or to replace one). */
    | { type: 'worker-spawned'; index: number; workerPid: number }
    /** It read its hello from the primary: Node's start and the application's imports are behind it. */
    | { type: 'worker-started'; index: number; workerPid: number; elapsedMs: number }
    | { type: 'worker-ready'; index: number; workerPid: number; elapsedMs: number }
    /** A worker failed before it served (it was killed if it still ran). */
    | { type: 'worker-failed'; index: number; workerPid: number | null; error: EcdysisError }
    /** `planned`: it was told to stop, or stopped on its own (a stop signal); otherwise it crashed and is replaced. */
    | { type: 'worker-exited'; index: number; workerPid: number; exitCode: number | null; signal: NodeJS.Signals | null; planned: boolean }
    /** Workers keep ending (ERR_ECDYSIS_WORKER_CRASH_LOOP): they are still replaced, with a backoff. */
    | { type: 'worker-crash-loop'; index: number; failures: number; error: EcdysisError }
  );

export type EventPayload = EcdysisEvent extends infer E ? (E extends EcdysisEvent ? Omit<E, keyof EventBase> : never) : never;

export interface WaitForParentOptions {
  signal?: AbortSignal;
}


const lifecycleChannel = channel('ecdysis:lifecycle');

export class LifecycleEvents {
  readonly #generation: number;
  readonly #observers = new Set<Subscriber<EcdysisEvent>>();
  /** The library's own listeners (metrics): called first, without rxjs. */
  readonly #taps: ((event: EcdysisEvent) => void)[] = [];
  #completed = false;

  constructor(generation: number) {
    this.#generation = generation;
  }

  emit(payload: EventPayload): void {
    const event = this.#stamp(payload);
    for (const tap of this.#taps) tap(event);
    if (lifecycleChannel.hasSubscribers) lifecycleChannel.publish(event);
    // A copy: a subscriber may unsubscribe (or subscribe) while it is called.
    for (const observer of [...this.#observers]) observer.next(event);
  }

  /** @internal Every event, as it is emitted, to the library's own bookkeeping. */
  tap(listener: (event: EcdysisEvent) => void): void {
    this.#taps.push(listener);
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
