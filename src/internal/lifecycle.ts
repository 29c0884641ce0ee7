/**
 * The lifecycle's vocabulary: the states and the transitions the state machine
 * allows, what each state remembers, and the events it emits. The machine
 * itself is in src/ecdysis.ts.
 */
import type { DrainResult } from './drain.ts';
import type { EcdysisError } from '../errors.ts';
import type { Listener } from '../listeners/listener.ts';
import type { HandoffSender } from './handoff.ts';
import type { CommittedChild, PendingChild } from './parent.ts';
import type { HandoffSummary } from './protocol.ts';

/**
 * - starting: created, not ready yet.
 * - committing: ready() is under way: PID file written and, for a child, ready
 *   sent to the previous generation, whose commit is awaited.
 * - ready: serving.
 * - upgrading: serving, and the next generation is starting.
 * - stopping: a full stop is closing the listeners (no handshake is refused
 *   half-way, nothing queued is reset).
 * - draining: no longer accepting; connections are draining. After an upgrade
 *   the successor is watched: if it dies, this generation serves again.
 * - probation: drained, idle, still watching the successor (option `probation`).
 * - drained: done; nothing of the library holds the process open.
 */
export type EcdysisState = 'starting' | 'committing' | 'ready' | 'upgrading' | 'stopping' | 'draining' | 'probation' | 'drained';
export type ExitMode = 'upgrade' | 'stop' | 'partial-stop';

/** Every transition the state machine allows; anything else is a bug and throws. */
export const TRANSITIONS: { readonly [S in EcdysisState]: readonly EcdysisState[] } = {
  starting: ['committing', 'stopping', 'draining'],
  committing: ['ready', 'starting', 'draining'],
  ready: ['upgrading', 'stopping', 'draining'],
  upgrading: ['ready', 'stopping', 'draining'],
  stopping: ['draining'],
  draining: ['probation', 'drained', 'ready'],
  probation: ['drained', 'ready'],
  drained: [],
};

/** How and why this generation is exiting. */
export interface ExitInfo {
  mode: ExitMode;
  /** What triggered it: a signal name, 'upgrade()', 'stop()'... */
  reason: string;
  /** For an upgrade: the pid of the generation that took over. */
  successor?: number;
}

export interface StopRequest {
  mode: 'stop' | 'partial-stop';
  reason: string;
}

/** What an exiting generation remembers, from the moment it stops accepting until it is drained. */
export interface Exit {
  info: ExitInfo;
  /** The listeners that stopped (or paused) accepting; their connections are drained. */
  listeners: Listener[];
  /** After an upgrade: the successor, watched until it exits or releases this generation. */
  successor: CommittedChild | undefined;
  /** A stop was asked for since: the service is going away, never taken back. */
  stopRequested: boolean;
  /** Stop signals received since. */
  stopSignals: number;
  /** The drain must end at once (a second stop signal), even if it has not started yet. */
  forced: boolean;
}

export type Phase =
  | { state: 'starting' }
  | { state: 'committing'; deferredStop: StopRequest | undefined }
  | { state: 'ready' }
  | { state: 'upgrading'; reason: string; startedAt: number; child: PendingChild | undefined; handoff: OutgoingHandoff | undefined }
  | { state: 'stopping'; exit: Exit }
  | { state: 'draining'; exit: Exit }
  | { state: 'probation'; exit: Exit; result: DrainResult; timer: NodeJS.Timeout }
  | { state: 'drained'; exit: Exit };
/** A hand-over in flight: what the handlers gave, and what was sent once it was. */
export interface OutgoingHandoff {
  sender: HandoffSender;
  sent: HandoffSummary | undefined;
  /** The child answered in a version without hand-over: it was skipped. */
  skipped: boolean;
}

export type PhaseOf<S extends EcdysisState> = Extract<Phase, { state: S }>;

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
    | { type: 'exiting'; mode: ExitMode; reason: string }
    | { type: 'successor-failed'; childPid: number; exitCode: number | null; signal: NodeJS.Signals | null; error: EcdysisError }
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
  );

export type EventPayload = EcdysisEvent extends infer E ? (E extends EcdysisEvent ? Omit<E, keyof EventBase> : never) : never;

export interface WaitForParentOptions {
  signal?: AbortSignal;
}

export interface Deferred<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
}

export function deferred<T>(): Deferred<T> {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

