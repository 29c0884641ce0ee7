/**
 * The processes a soak run started, directly or through an upgrade, and the
 * zombies among their children.
 *
 * A pid is remembered with its start time (/proc/<pid>/stat field 22), so a pid
 * that the kernel has since given to an unrelated process is never signalled.
 */
import { readdirSync } from 'node:fs';
import { statFields } from '../examples/lib/processes.ts';

/** Index of the start time in statFields() (stat field 22; the fields start at field 3). */
const START_TIME = 19;
const PARENT = 1;
const STATE = 0;

export class OwnedProcesses {
  /** pid -> start time, or null when it had already gone when first seen. */
  readonly #owned = new Map<number, string | null>();
  /**
   * Seen dead: an exited process never comes back, and an hour's run names
   * thousands of pids, so only the others are looked up in /proc again.
   */
  readonly #gone = new Set<number>();

  /** Remember `pid` as ours (a no-op when already known). */
  own(pid: number): void {
    if (this.#owned.has(pid)) return;
    this.#owned.set(pid, statFields(pid)?.[START_TIME] ?? null);
  }

  get pids(): number[] {
    return [...this.#owned.keys()];
  }

  /** Still the process we started, and not a zombie. */
  isAlive(pid: number): boolean {
    if (this.#gone.has(pid)) return false;
    const fields = statFields(pid);
    const started = this.#owned.get(pid);
    const alive = fields !== undefined && started !== undefined && started !== null && fields[START_TIME] === started && fields[STATE] !== 'Z';
    if (!alive && started !== undefined) this.#gone.add(pid);
    return alive;
  }

  alive(except: number[] = []): number[] {
    return this.pids.filter((pid) => !except.includes(pid) && this.isAlive(pid));
  }

  /** Signal `pid` if it is still the process we started; false otherwise. */
  signal(pid: number, signal: NodeJS.Signals): boolean {
    if (!this.isAlive(pid)) return false;
    try {
      process.kill(pid, signal);
      return true;
    } catch {
      return false; // exited between the check and the kill
    }
  }

  killAll(except: number[] = []): void {
    for (const pid of this.alive(except)) this.signal(pid, 'SIGKILL');
  }
}

export interface Zombie {
  pid: number;
  parent: number;
}

/**
 * Looks through /proc every `intervalMs` for processes in state Z whose parent
 * is one of ours (or the driver itself). A child is a zombie for a moment
 * between its exit and its parent's wait(); only one still there on the next
 * look counts.
 */
export class ZombieWatch {
  readonly #owned: OwnedProcesses;
  readonly #timer: NodeJS.Timeout;
  /** "pid:starttime" of zombies seen on the last look. */
  #lastLook = new Set<string>();
  readonly #seen = new Map<string, Zombie>();

  constructor(owned: OwnedProcesses, intervalMs = 1_000) {
    this.#owned = owned;
    this.#timer = setInterval(() => this.look(), intervalMs);
    this.#timer.unref();
  }

  /** One look now (also used once more at the end of the run). */
  look(): void {
    const parents = new Set([process.pid, ...this.#owned.pids]);
    const now = new Set<string>();
    let entries: string[];
    try {
      entries = readdirSync('/proc');
    } catch {
      return;
    }
    for (const entry of entries) {
      if (!/^\d+$/.test(entry)) continue;
      const fields = statFields(entry);
      if (fields?.[STATE] !== 'Z') continue;
      const parent = Number(fields[PARENT]);
      if (!parents.has(parent)) continue;
      const key = `${entry}:${fields[START_TIME]}`;
      now.add(key);
      if (this.#lastLook.has(key) && !this.#seen.has(key)) this.#seen.set(key, { pid: Number(entry), parent });
    }
    this.#lastLook = now;
  }

  get zombies(): Zombie[] {
    return [...this.#seen.values()];
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
