/**
 * One generation's state, shared by the lifecycle's steps: the phase (the only
 * state that decides anything, changed only by enter()), and what lives beside
 * it for the life of the process. The steps are modules of functions that take
 * this object (start, ready, upgrade, take-back, exit, drain, triggers); none
 * of them keeps state of its own.
 */
import { debuglog } from 'node:util';
import { EcdysisError } from '../errors.ts';
import type { ParentLink } from '../generation/parent-link.ts';
import { deferred, type Deferred } from '../internal/deferred.ts';
import type { DrainResult } from '../listeners/drain.ts';
import { Ancestors } from '../generation/ancestors.ts';
import type { GenerationChannel } from '../generation/generation-channel.ts';
import type { HandoffReceiver } from '../generation/handoff-receive.ts';
import type { HandoffHandler, HandoffSender } from '../generation/handoff-send.ts';
import type { HandoffChannel } from '../wire/handoff-channel.ts';
import { ListenerSet } from '../generation/listener-set.ts';
import type { WorkerGroup } from '../generation/worker-group.ts';
import type { ResolvedOptions } from './options.ts';
import { Registry } from '../generation/registry.ts';
import type { Listener } from '../listeners/listener.ts';
import type { TriggerAction } from '../triggers/signals.ts';
import { Metrics } from './counters.ts';
import { LifecycleEvents, type EventPayload } from './events.ts';
import { RULES, TRANSITIONS, type EcdysisState, type ExitInfo, type Phase, type PhaseOf, type Rules, type Step } from './machine.ts';

export const debug = debuglog('ecdysis');

const INTERNAL_KEY = /^(control|probes):/;

/** What a transition's side effects may need beyond the new phase. */
export interface StepDetail {
  /** child-failed: why. */
  error?: EcdysisError;
}

/** Called after every transition, in order (effects.ts). */
export type TransitionHook = (step: Step, phase: Phase, detail: StepDetail) => void;

/** One life of the generation, from its start or its last take-back until it exits. */
export interface Epoch {
  abort: AbortController;
  exit: Deferred<ExitInfo>;
}

/** drain(): the first call's options and its one result. */
export interface DrainRequest {
  timeout: number;
  idleTimeout: number | undefined;
  result: Deferred<DrainResult>;
}

export class Generation {
  readonly generation: number;
  /** single: one process; primary: holds a worker group's sockets, accepts nothing; worker: serves for a primary. */
  readonly role: 'single' | 'primary' | 'worker';
  readonly options: ResolvedOptions;
  readonly link: ParentLink | undefined;
  /** Local mode (internal/local-mode.ts): Node holds the sockets, upgrades are refused. */
  readonly local: boolean;
  readonly events: LifecycleEvents;
  readonly registry = new Registry();
  readonly listeners = new ListenerSet(this.registry);
  /** Older generations still draining, and this one's retire endpoint (maxDrainingGenerations > 1). */
  readonly ancestors: Ancestors;
  /** Counters that go on across generations (metrics.ts counts them). */
  readonly metrics: Metrics;
  /** addHealthCheck(): the application's checks, by name. */
  readonly healthChecks = new Map<string, () => boolean | Promise<boolean>>();
  /** onHandoff() handlers, run at each upgrade attempt. */
  readonly handoffHandlers: HandoffHandler[] = [];
  /** A child's side of the hand-over, when its parent speaks version 4. */
  receiver: HandoffReceiver | undefined;
  /**
   * A worker: its hand-over to the new worker of its index, from its primary's
   * offer until the group's upgrade is decided (lifecycle/workers.ts).
   */
  workerHandoff: { sender: HandoffSender; channel: HandoffChannel } | undefined;
  /** Messages with the previous generation (a child) and with the latest successor (after a spawn). */
  parentChannel: GenerationChannel | undefined;
  successorChannel: GenerationChannel | undefined;
  /** Replaced when this generation takes the service back: `exit` and `signal` are per life. */
  epoch: Epoch = newEpoch();
  drainRequest: DrainRequest | undefined;
  /** Gives stop signals their default action back (after a forced drain). */
  removeSignals: (which: readonly TriggerAction[]) => void = () => {};
  cancelReadyReminder: () => void = () => {};
  /** A primary's workers, from its ready() on (lifecycle/workers.ts). */
  group: WorkerGroup | undefined;
  #phase: Phase = { state: 'starting' };
  readonly #hooks: TransitionHook[] = [];

  constructor(options: ResolvedOptions, link: ParentLink | undefined, local = false) {
    this.options = options;
    this.link = link;
    this.local = local;
    this.generation = link?.hello.generation ?? 0;
    this.role = link?.hello.worker ? 'worker' : options.workers !== undefined ? 'primary' : 'single';
    this.events = new LifecycleEvents(this.generation);
    this.ancestors = new Ancestors(options.maxDrainingGenerations, this.generation, link?.hello.draining ?? []);
    this.metrics = new Metrics(link?.hello.metrics);
  }

  get phase(): Phase {
    return this.#phase;
  }

  get rules(): Rules {
    return RULES[this.#phase.state];
  }

  /** The previous generation is still running (draining, in probation, or kept alive by its application). */
  get parentAlive(): boolean {
    return this.link?.parentAlive ?? false;
  }

  /**
   * Whether this process accepts on `listener`: in a primary only its control
   * sockets and probe listener accept; its workers serve the others.
   */
  accepts(listener: Listener): boolean {
    return this.role !== 'primary' || INTERNAL_KEY.test(listener.key);
  }

  /** The application's listeners: not the control sockets, nor the probe listener (keys prefixed 'control:', 'probes:'). */
  applicationListeners(): Listener[] {
    return this.listeners.all.filter((l) => !INTERNAL_KEY.test(l.key));
  }

  onTransition(hook: TransitionHook): void {
    this.#hooks.push(hook);
  }

  /**
   * The one way the state changes: `step` must lead from the current state to
   * `next.state` in TRANSITIONS. Hooks run after the change, events are the
   * caller's to emit after this returns: whoever they call back sees the new state.
   */
  enter<S extends EcdysisState>(step: Step, next: PhaseOf<S>, detail: StepDetail = {}): PhaseOf<S> {
    const from = this.#phase.state;
    if (TRANSITIONS[from][step] !== next.state) {
      throw new Error(`ecdysis: internal error: no step ${step} from ${from} to ${next.state}`);
    }
    debug('%s: %s -> %s', step, from, next.state);
    this.#phase = next;
    for (const hook of this.#hooks) hook(step, next, detail);
    return next;
  }

  emit(payload: EventPayload): void {
    this.events.emit(payload);
  }

  /** The refusal a state's rule names, as an error for `action`; undefined when allowed. */
  refusal(action: 'listen' | 'upgrade' | 'ready'): EcdysisError | undefined {
    const rule = this.rules[action];
    if (rule === true || rule === 'begin' || rule === 'join' || rule === 'done') return undefined;
    if (rule === 'ERR_ECDYSIS_STOPPING') return this.stoppingError();
    if (rule === 'ERR_ECDYSIS_NOT_READY') return new EcdysisError(rule, `generation ${this.generation} cannot upgrade before ready()`);
    return new EcdysisError(
      rule,
      action === 'listen' ? 'cannot add a listener while an upgrade is in flight: the next generation would not get it' : `generation ${this.generation} is already upgrading`,
    );
  }

  stoppingError(): EcdysisError {
    return new EcdysisError('ERR_ECDYSIS_STOPPING', `generation ${this.generation} is shutting down`);
  }
}

export function newEpoch(): Epoch {
  return { abort: new AbortController(), exit: deferred<ExitInfo>() };
}
