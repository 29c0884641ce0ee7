/**
 * The lifecycle's machine: its states, the steps that move it (one table:
 * state x step -> next state), what each state allows (one table), and what
 * each state remembers. Generation.enter() (core.ts) is the only way the
 * state changes, and it looks every step up here; the steps themselves are the
 * modules beside this one, and side effects hang on the transitions
 * (effects.ts).
 *
 * ```mermaid
 * stateDiagram-v2
 *   [*] --> starting
 *   starting --> committing: ready
 *   committing --> starting: ready-failed
 *   committing --> ready: committed
 *   committing --> draining: gave-up
 *   starting --> stopping: stop
 *   starting --> draining: partial-stop, leave
 *   ready --> upgrading: upgrade
 *   ready --> rolling-back: roll-back
 *   rolling-back --> ready: rollback-refused
 *   rolling-back --> draining: rolled-back
 *   upgrading --> ready: child-failed
 *   upgrading --> draining: commit
 *   ready --> draining: replaced
 *   ready --> stopping: stop
 *   upgrading --> stopping: stop
 *   ready --> lame-duck: lame-duck
 *   upgrading --> lame-duck: lame-duck
 *   lame-duck --> stopping: stop
 *   lame-duck --> draining: partial-stop
 *   ready --> draining: partial-stop
 *   upgrading --> draining: partial-stop
 *   stopping --> draining: closed
 *   draining --> draining: drain
 *   draining --> probation: watch
 *   draining --> drained: finish
 *   probation --> drained: finish
 *   draining --> ready: take-back
 *   probation --> ready: take-back
 * ```
 */
import type { ErrorCode } from '../errors.ts';
import type { Deferred } from '../internal/deferred.ts';
import type { DrainHandle, DrainResult } from '../listeners/drain.ts';
import type { HandoffSender } from '../generation/handoff-send.ts';
import type { Successor, PendingSuccessor } from '../generation/successor.ts';
import type { HandoffSummary } from '../wire/protocol.ts';
import type { Listener } from '../listeners/listener.ts';

/**
 * - starting: created, not ready yet.
 * - committing: ready() is under way: the PID file checked (or written) and,
 *   for a child, ready sent to the previous generation, whose commit is awaited.
 * - ready: serving.
 * - upgrading: serving, and the next generation is starting.
 * - rolling-back: serving, and the previous generation (alive, draining or in
 *   its probation) was asked to take the service back (operator rollback).
 * - lame-duck: a stop was asked for with `stopDelay`: still serving for the
 *   delay, reporting not-ready, so that balancers stop sending first.
 * - stopping: a full stop is closing the listeners (no handshake is refused
 *   half-way, nothing queued is reset).
 * - draining: no longer accepting; connections are draining. After an upgrade
 *   the successor is watched: if it dies, this generation serves again.
 * - probation: drained, idle, still watching the successor (option `probation`).
 * - drained: done; nothing of the library holds the process open.
 */
export type EcdysisState = 'starting' | 'committing' | 'ready' | 'upgrading' | 'rolling-back' | 'lame-duck' | 'stopping' | 'draining' | 'probation' | 'drained';
/** 'rollback': the previous generation took the service back on request; this one leaves. */
export type ExitMode = 'upgrade' | 'stop' | 'partial-stop' | 'rollback';

/** What moves the machine (internal: the public events are in events.ts). */
export type Step =
  /** ready() was called. */
  | 'ready'
  /** The PID file or the hand-over failed: ready() may be called again. */
  | 'ready-failed'
  /** The parent committed (or died first, or there is none): this generation serves. */
  | 'committed'
  /** The parent neither committed nor exited in time: this generation gives up. */
  | 'gave-up'
  | 'upgrade'
  /** Operator rollback: the previous generation is asked to take the service back. */
  | 'roll-back'
  | 'rollback-refused'
  /** The previous generation serves again: this one leaves it the sockets and drains. */
  | 'rolled-back'
  /** The next generation failed before it was committed to. */
  | 'child-failed'
  /** The next generation serves; this one drains. */
  | 'commit'
  /** A worker: its primary committed to a new group; it stops accepting and drains (the sockets stay open). */
  | 'replaced'
  /** A stop with `stopDelay`: not-ready first, serving on for the delay. */
  | 'lame-duck'
  | 'stop'
  | 'partial-stop'
  /** A stop while the parent still serves: the sockets and paths are left to it. */
  | 'leave'
  /** A full stop has closed the listeners. */
  | 'closed'
  /** drain() began on the connections. */
  | 'drain'
  /** Drained; watching the successor for `probation` ms. */
  | 'watch'
  | 'finish'
  /** The successor died: this generation serves again. */
  | 'take-back';

/** Every transition the machine allows; anything else is a bug and throws. */
export const TRANSITIONS: { readonly [S in EcdysisState]: { readonly [K in Step]?: EcdysisState } } = {
  starting: { ready: 'committing', stop: 'stopping', 'partial-stop': 'draining', leave: 'draining' },
  committing: { 'ready-failed': 'starting', committed: 'ready', 'gave-up': 'draining' },
  ready: { upgrade: 'upgrading', 'roll-back': 'rolling-back', 'lame-duck': 'lame-duck', stop: 'stopping', 'partial-stop': 'draining', replaced: 'draining' },
  'rolling-back': { 'rollback-refused': 'ready', 'rolled-back': 'draining' },
  upgrading: { 'child-failed': 'ready', commit: 'draining', 'lame-duck': 'lame-duck', stop: 'stopping', 'partial-stop': 'draining' },
  'lame-duck': { stop: 'stopping', 'partial-stop': 'draining' },
  stopping: { closed: 'draining' },
  draining: { drain: 'draining', watch: 'probation', finish: 'drained', 'take-back': 'ready' },
  probation: { finish: 'drained', 'take-back': 'ready' },
  drained: {},
};

type Refusal = Extract<ErrorCode, 'ERR_ECDYSIS_NOT_READY' | 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS' | 'ERR_ECDYSIS_STOPPING'>;

/** What a state allows: every decision a public method makes from the state alone. */
export interface Rules {
  /** A new listener: allowed, or the refusal's code. */
  listen: true | Refusal;
  /** An upgrade: allowed (a parent still draining may still refuse it), or the refusal's code. */
  upgrade: true | Refusal;
  /** ready(): begin it, join the one under way, already done, or the refusal's code. */
  ready: 'begin' | 'join' | 'done' | Refusal;
  /**
   * A stop: begin one (after the lame-duck delay where there is one), keep it
   * until the commit's outcome is known (a child whose parent may be committing
   * right now), end the lame-duck delay now (a second stop), or, already
   * exiting, mark the service as going away (and escalate, for a repeated stop
   * signal).
   */
  stop: 'begin' | 'defer' | 'expedite' | 'exiting';
  /** Serving and not going away: what a readiness probe reports. */
  serving: boolean;
}

const EXITING: Rules = { listen: 'ERR_ECDYSIS_STOPPING', upgrade: 'ERR_ECDYSIS_STOPPING', ready: 'ERR_ECDYSIS_STOPPING', stop: 'exiting', serving: false };

export const RULES: { readonly [S in EcdysisState]: Rules } = {
  starting: { listen: true, upgrade: 'ERR_ECDYSIS_NOT_READY', ready: 'begin', stop: 'begin', serving: false },
  committing: { listen: true, upgrade: 'ERR_ECDYSIS_NOT_READY', ready: 'join', stop: 'defer', serving: false },
  ready: { listen: true, upgrade: true, ready: 'done', stop: 'begin', serving: true },
  upgrading: { listen: 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS', upgrade: 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS', ready: 'done', stop: 'begin', serving: true },
  'rolling-back': { listen: 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS', upgrade: 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS', ready: 'done', stop: 'defer', serving: true },
  'lame-duck': { listen: 'ERR_ECDYSIS_STOPPING', upgrade: 'ERR_ECDYSIS_STOPPING', ready: 'done', stop: 'expedite', serving: false },
  stopping: EXITING,
  draining: EXITING,
  probation: EXITING,
  drained: EXITING,
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
  /**
   * A worker's stop ordered by its primary: the worker's own stop signal is
   * then the same stop (Ctrl-C, systemd's KillMode=control-group: every
   * process of the group gets one), not a second one.
   */
  byPrimary?: boolean;
}

/** What an exiting generation remembers, from the moment it stops accepting until it is drained. */
export interface Exit {
  info: ExitInfo;
  /** The listeners that stopped (or paused) accepting; their connections are drained. */
  listeners: Listener[];
  /** After an upgrade: the successor, watched until it exits or releases this generation. */
  successor: Successor | undefined;
  /** After an upgrade: how many sockets of each group the successor accepts on (undefined: every one). */
  successorServes?: number;
  /** The service is going away (a stop was asked for): never taken back. */
  goingAway: boolean;
  /** Stop signals received since. */
  stopSignals: number;
  /**
   * How many of them end the drain at once: 1 when a stop signal of this
   * process began the exit, 2 when something else did (an upgrade, the
   * primary's order): the first one only says the service is going away.
   */
  signalsToForce: 1 | 2;
  /** The drain must end at once (a second stop signal, a descendant's `finish`), even if it has not started yet. */
  forced: boolean;
}

/** A hand-over in flight: what the handlers gave, and what was sent once it was. */
export interface OutgoingHandoff {
  sender: HandoffSender;
  sent: HandoffSummary | undefined;
  /** The child answered in a version without hand-over: it was skipped. */
  skipped: boolean;
}

export type Phase =
  | { state: 'starting' }
  /** `done`: the outcome every ready() caller shares; `deferredStop`: a stop that waits for it. */
  | { state: 'committing'; done: Deferred<void>; deferredStop: StopRequest | undefined }
  | { state: 'ready' }
  /** `deferredStop`: a stop that waits for the previous generation's answer. */
  | { state: 'rolling-back'; deferredStop: StopRequest | undefined }
  /** `child` is undefined while the command and the draining chain are resolved. */
  | { state: 'upgrading'; reason: string; startedAt: number; child: PendingSuccessor | undefined; handoff: OutgoingHandoff | undefined }
  /** `request`: the stop carried out when the delay ends (at `until`, Date.now() ms). */
  | { state: 'lame-duck'; request: StopRequest; timer: NodeJS.Timeout; until: number }
  | { state: 'stopping'; exit: Exit }
  /** `drain`: the connections' drain, once drain() was called. */
  | { state: 'draining'; exit: Exit; drain: DrainHandle | undefined }
  | { state: 'probation'; exit: Exit; result: DrainResult; timer: NodeJS.Timeout }
  | { state: 'drained'; exit: Exit };

export type PhaseOf<S extends EcdysisState> = Extract<Phase, { state: S }>;
/** A phase of a generation that is exiting. */
export type ExitingPhase = Extract<Phase, { exit: Exit }>;
