/**
 * The soak service as the driver sees it: it starts generation 0 of soak/app.ts
 * (again, after the service was lost), reads the records every generation
 * writes to the stdout pipe they share, and owns every pid those records name.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { onLines } from '../examples/lib/lines.ts';
import type { SoakRecord } from './plan.ts';
import type { OwnedProcesses } from './processes.ts';

const app = fileURLToPath(new URL('./app.ts', import.meta.url));
const repoRoot = fileURLToPath(new URL('../', import.meta.url));
/** How much of the generations' stderr is kept to explain a harness error. */
const STDERR_TAIL_CHARS = 4_000;

export class SoakService {
  readonly records: SoakRecord[] = [];
  readonly #owned: OwnedProcesses;
  readonly #env: NodeJS.ProcessEnv;
  #stderr = '';

  constructor(owned: OwnedProcesses, env: Record<string, string>) {
    this.#owned = owned;
    this.#env = { ...process.env, ...env };
  }

  /** Start a generation 0 and return its pid. */
  start(): number {
    const root = spawn(process.execPath, ['--import', 'tsx', app], {
      cwd: repoRoot,
      env: this.#env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (root.pid === undefined) throw new Error(`could not start ${app}`);
    this.#owned.own(root.pid);
    root.on('error', () => {}); // a failed start shows as a missing ready record
    onLines(root.stdout, (line) => this.#onLine(line));
    // The 'throw' behaviour's stack trace lands here by design: kept, not printed.
    root.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      this.#stderr = (this.#stderr + chunk).slice(-STDERR_TAIL_CHARS);
    });
    return root.pid;
  }

  get stderrTail(): string {
    return this.#stderr;
  }

  /** The first record at index `since` or later that matches. */
  find(since: number, match: (r: SoakRecord) => boolean): SoakRecord | undefined {
    for (let i = since; i < this.records.length; i++) if (match(this.records[i]!)) return this.records[i];
    return undefined;
  }

  /** An 'event' record of `pid` with one of the given ecdysis event types, at `since` or later. */
  findEvent(since: number, pid: number, ...types: string[]): SoakRecord | undefined {
    return this.find(since, (r) => r.type === 'event' && r.pid === pid && types.includes(r.event ?? ''));
  }

  #onLine(line: string): void {
    let record: SoakRecord;
    try {
      record = JSON.parse(line) as SoakRecord;
    } catch {
      this.#stderr = `${this.#stderr}stdout: ${line}\n`.slice(-STDERR_TAIL_CHARS);
      return;
    }
    // Own pids the moment they are named: a child-spawned record is the first
    // word of a new generation, which may be killed or crash a moment later.
    if (typeof record.pid === 'number') this.#owned.own(record.pid);
    if (typeof record.childPid === 'number') this.#owned.own(record.childPid);
    this.records.push(record);
  }
}
