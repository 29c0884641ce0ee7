/**
 * The driver's side of apps/lifecycle.mjs: every app process appends
 * { t, pid, event, ... } lines to one file; this reads them back and answers
 * "who is serving", "when did that pid exit", and waits for a hand-over.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAlive } from './children.ts';
import { onExit } from './cleanup.ts';
import { spread, type Spread } from './stats.ts';

export interface LifecycleRecord {
  t: number;
  pid: number;
  event: string;
  [detail: string]: unknown;
}

/** When one restart completed, as seen from the apps' own records. */
export interface Handover {
  triggeredAt: number;
  /** The last replacement process reported serving (epoch ms). */
  servingAt: number;
  /** The last of the previous processes exited (epoch ms). */
  oldGoneAt: number;
  /**
   * The last of the previous processes was done serving (epoch ms): its
   * 'drain-done' record (an ecdysis generation then waits out its probation,
   * serving nothing), else its exit.
   */
  oldDoneAt: number;
  newPids: number[];
  oldPids: number[];
  /** The first new process's start, when it reports its phases (the ecdysis app does). */
  phases?: StartPhases;
  /** CPU time (user + system) the first new process used from its start to serving, ms, when it reports it. */
  startCpuMs?: number;
}

/** The CPU time process `pid` reported using until it served (plain-http.mjs: cpuMs; ecdysis-http.mjs: phases.cpuMs). */
export function startCpuMs(records: LifecycleRecord[], pid: number): number | undefined {
  const serving = records.find((r) => r.pid === pid && r.event === 'serving');
  const value = serving?.cpuMs ?? (serving?.phases as Record<string, number> | undefined)?.cpuMs;
  return typeof value === 'number' ? value : undefined;
}

/**
 * Where the start of a new ecdysis generation went (apps/ecdysis-http.mjs puts
 * its clock readings in its serving record), ms: trigger → process start
 * (spawn), → its script runs (Node's bootstrap and the app's static imports),
 * → `import` of ecdysis, → `Ecdysis.create()`, → listeners and servers set up,
 * → `ready()` resolved (the old generation committed).
 */
export interface StartPhases {
  spawn: number;
  bootstrap: number;
  importLibrary: number;
  create: number;
  listen: number;
  ready: number;
}

export const START_PHASES: (keyof StartPhases)[] = ['spawn', 'bootstrap', 'importLibrary', 'create', 'listen', 'ready'];

export function startPhases(records: LifecycleRecord[], pid: number, triggeredAt: number): StartPhases | undefined {
  const serving = records.find((r) => r.pid === pid && r.event === 'serving');
  const p = serving?.phases as Record<string, number> | undefined;
  if (!serving || !p) return undefined;
  return {
    spawn: p.processStart! - triggeredAt,
    bootstrap: p.startedAt! - p.processStart!,
    importLibrary: p.importedAt! - p.startedAt!,
    create: p.createdAt! - p.importedAt!,
    listen: p.listeningAt! - p.createdAt!,
    ready: serving.t - p.listeningAt!,
  };
}

/** Each phase's spread over several starts; nothing when no start reported its phases. */
export function phaseSpreads(all: StartPhases[]): { startPhases?: Record<keyof StartPhases, Spread> } {
  if (all.length === 0) return {};
  return { startPhases: Object.fromEntries(START_PHASES.map((k) => [k, spread(all.map((p) => p[k]))])) as Record<keyof StartPhases, Spread> };
}

export class LifecycleLog {
  readonly file: string;

  constructor(file: string) {
    this.file = file;
    writeFileSync(file, '');
    // Whatever wrote to this log was started by the bench, directly or not.
    onExit(() => this.killAll());
  }

  /** SIGKILL every process of this log that is still running. */
  killAll(): void {
    for (const pid of this.alivePids()) process.kill(pid, 'SIGKILL');
  }

  records(): LifecycleRecord[] {
    return parse(readFileSync(this.file, 'utf8'));
  }

  async recordsAsync(): Promise<LifecycleRecord[]> {
    return parse(await readFile(this.file, 'utf8'));
  }

  /** Pids that reported serving and have not exited. */
  serving(records = this.records()): number[] {
    const exitedPids = new Set(records.filter((r) => r.event === 'exit').map((r) => r.pid));
    return [...new Set(records.filter((r) => r.event === 'serving' && !exitedPids.has(r.pid)).map((r) => r.pid))];
  }

  /** Wait until `count` processes are serving. */
  async waitForServing(count: number, timeoutMs: number): Promise<number[]> {
    return this.#poll(timeoutMs, `${count} serving process(es)`, (records) => {
      const pids = this.serving(records);
      return pids.length >= count ? pids : undefined;
    });
  }

  /** Wait until process `pid` has reported serving. */
  async waitForPid(pid: number, timeoutMs: number): Promise<void> {
    await this.#poll(timeoutMs, `pid ${pid} serving`, (records) => (this.serving(records).includes(pid) ? true : undefined));
  }

  /**
   * After a trigger at `triggeredAt` that replaces `oldPids`: wait until `count`
   * processes that started serving after the trigger are up and every old pid
   * has exited.
   */
  async waitForHandover(triggeredAt: number, oldPids: number[], count: number, timeoutMs: number): Promise<Handover> {
    return this.#poll(timeoutMs, `hand-over from ${oldPids.join(',')}`, (records) => {
      const fresh = records.filter((r) => r.event === 'serving' && r.t >= triggeredAt && !oldPids.includes(r.pid));
      const exits = records.filter((r) => r.event === 'exit' && oldPids.includes(r.pid));
      const exitedPids = new Set(exits.map((r) => r.pid));
      // A process killed by a signal writes no exit record: count it gone when it is gone.
      const allGone = oldPids.every((pid) => exitedPids.has(pid) || !isAlive(pid));
      if (fresh.length < count || !allGone) return undefined;
      const goneAt = oldPids.map((pid) => exits.find((r) => r.pid === pid)?.t ?? Date.now());
      const doneAt = oldPids.map((pid, i) => Math.min(goneAt[i]!, records.find((r) => r.pid === pid && r.event === 'drain-done')?.t ?? Infinity));
      return {
        triggeredAt,
        servingAt: Math.max(...fresh.slice(0, count).map((r) => r.t)),
        oldGoneAt: Math.max(...goneAt),
        oldDoneAt: Math.max(...doneAt),
        newPids: fresh.slice(0, count).map((r) => r.pid),
        oldPids,
      };
    });
  }

  /** Every pid that ever wrote a record and is still alive (for cleanup). */
  alivePids(): number[] {
    return [...new Set(this.records().map((r) => r.pid))].filter(isAlive);
  }

  async #poll<T>(timeoutMs: number, what: string, check: (records: LifecycleRecord[]) => T | undefined): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const result = check(await this.recordsAsync());
      if (result !== undefined) return result;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (log: ${this.file})`);
      await sleep(5);
    }
  }
}

function parse(text: string): LifecycleRecord[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as LifecycleRecord);
}
