/**
 * What the soak driver and the soak service agree on: the behaviours a new
 * generation can be told to have, the plan file that tells it, and the records
 * every generation writes to the shared stdout pipe.
 */
import { readFileSync, renameSync, writeFileSync } from 'node:fs';

/** Behaviours that end in a serving new generation. */
export const GOOD_BEHAVIOURS = ['ok', 'slow-start'] as const;

/** Behaviours of a new version that fails, before or after it is ready. */
export const BAD_BEHAVIOURS = ['crash-before-ready', 'throw', 'hang', 'exit-after-ready', 'sigkill-during-handover'] as const;

export type Behaviour = (typeof GOOD_BEHAVIOURS)[number] | (typeof BAD_BEHAVIOURS)[number];
export type BadBehaviour = (typeof BAD_BEHAVIOURS)[number];

export function isBadBehaviour(name: string): name is BadBehaviour {
  return (BAD_BEHAVIOURS as readonly string[]).includes(name);
}

/** How long a `slow-start` generation waits before ready(); within any sane upgradeTimeout. */
export const SLOW_START_MS = 1_500;
/** How long an `exit-after-ready` generation serves before it exits. */
export const EXIT_AFTER_READY_MS = 300;

/**
 * The next start of generation `generation` behaves as `behaviour`. The driver
 * writes this before each upgrade; `attempt` lets it match the new generation's
 * records to the upgrade it asked for. Any other start (a different generation
 * number, a generation 0 started by the driver) behaves as 'ok'.
 */
export interface Plan {
  attempt: number;
  generation: number;
  behaviour: Behaviour;
}

/** Written through a rename, so a generation starting meanwhile reads the old plan or the new one, never half. */
export function writePlan(path: string, plan: Plan): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(plan));
  renameSync(`${path}.tmp`, path);
}

export function readPlan(path: string | undefined): Plan | undefined {
  if (!path) return undefined;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Plan;
  } catch {
    return undefined; // no plan yet: generation 0
  }
}

/**
 * One JSON line on stdout. `type` is 'created' | 'ready' | 'event' | 'exiting' |
 * 'drained' | 'exit'; an 'event' record carries the ecdysis event's type in
 * `event`. `attempt` is set when this generation was started by that upgrade
 * attempt's plan.
 */
export interface SoakRecord {
  type: string;
  pid: number;
  gen: number;
  attempt: number | null;
  time: number;
  event?: string;
  behaviour?: Behaviour;
  childPid?: number;
  code?: string;
  exitCode?: number | null;
  signal?: string | null;
  fds?: number;
  rssKb?: number;
  mode?: string;
  reason?: string;
  [key: string]: unknown;
}
