/** What became of each upgrade the soak asked for, and what each behaviour should lead to. */
import type { Behaviour } from './plan.ts';

/** What happened after a generation died after it was ready. */
export type AfterDeath = 'taken-back' | 'service-lost';

export type Outcome =
  /** The new generation serves and its predecessor exited. */
  | { kind: 'succeeded'; successor: number }
  /** The new generation never got ready; the old one kept serving (child-failed). */
  | { kind: 'failed'; code: string; exitCode: number | null; signal: string | null }
  /** Ready, then dead: either an older generation took back, or nobody was left and the driver restarted the service. */
  | { kind: 'died-after-ready'; successor: number; then: AfterDeath }
  /** The serving generation refused to upgrade. */
  | { kind: 'refused'; code: string }
  /** The serving generation itself died while upgrading. */
  | { kind: 'serving-died'; then: AfterDeath }
  /** The new generation was ready, but its predecessor was still running at the bound; the driver killed it. */
  | { kind: 'old-stayed'; successor: number }
  /** No child-ready, child-failed or refused within the bound. */
  | { kind: 'no-answer' };

export interface Generation {
  pid: number;
  gen: number;
}

export interface Attempt {
  n: number;
  behaviour: Behaviour;
  from: Generation;
  triggeredAt: number;
  /** When the driver knew who serves next (after a restart, once generation 0 was ready). */
  settledAt: number;
  outcome: Outcome;
  /** From the old generation's child-ready or child-failed event: how long the new one took. */
  answerMs?: number;
  /** sigkill-during-handover: the new generation got ready before the driver could kill it. */
  killMissed?: boolean;
}

/** A serving generation that died between upgrades. */
export interface Incident {
  generation: Generation;
  detectedAt: number;
  settledAt: number;
  then: AfterDeath;
}

/** The service was lost: `deadPid` died with nobody to take back, and a new generation 0 was started. */
export interface Restart {
  deadPid: number;
  /** From noticing the death to the new generation 0's ready. */
  downMs: number;
}

/**
 * Whether the outcome is the one the behaviour asks for. A successor that dies
 * after ready is "expected" whatever follows: what follows (take-back or a lost
 * service) is what the soak measures, in the failed requests.
 */
export function isExpected(behaviour: Behaviour, outcome: Outcome): boolean {
  switch (behaviour) {
    case 'ok':
    case 'slow-start':
      return outcome.kind === 'succeeded';
    case 'crash-before-ready':
      return outcome.kind === 'failed' && outcome.code === 'ERR_ECDYSIS_CHILD_EXITED' && outcome.exitCode === 3;
    case 'throw':
      // Node's exit code for an uncaught exception.
      return outcome.kind === 'failed' && outcome.code === 'ERR_ECDYSIS_CHILD_EXITED' && outcome.exitCode === 1;
    case 'hang':
      return outcome.kind === 'failed' && outcome.code === 'ERR_ECDYSIS_CHILD_TIMEOUT';
    case 'sigkill-during-handover':
      return outcome.kind === 'failed' && outcome.code === 'ERR_ECDYSIS_CHILD_EXITED' && outcome.signal === 'SIGKILL';
    case 'exit-after-ready':
      return outcome.kind === 'died-after-ready';
  }
}

/** A short label, e.g. "failed ERR_ECDYSIS_CHILD_EXITED (code 3)". */
export function describe(outcome: Outcome): string {
  switch (outcome.kind) {
    case 'succeeded':
      return 'succeeded';
    case 'failed': {
      const how = outcome.signal ? `signal ${outcome.signal}` : outcome.exitCode !== null ? `code ${outcome.exitCode}` : '';
      return `failed ${outcome.code}${how ? ` (${how})` : ''}`;
    }
    case 'died-after-ready':
      return `successor died after ready, ${outcome.then === 'taken-back' ? 'old generation took back' : 'service lost'}`;
    case 'refused':
      return `refused ${outcome.code}`;
    case 'serving-died':
      return `serving generation died while upgrading, ${outcome.then === 'taken-back' ? 'old generation took back' : 'service lost'}`;
    case 'old-stayed':
      return 'old generation still running after the hand-over (killed)';
    case 'no-answer':
      return 'no answer to the upgrade';
  }
}
