/**
 * Test harness for real generations: starts generation 0 of a fixture script
 * with stdout piped (every later generation inherits it), parses the JSON lines
 * they all write, and kills every pid it ever saw at teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { isRunning, statFields } from '../../examples/lib/processes.ts';
import { onLines } from '../../examples/lib/lines.ts';

export const fixturesDir = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
/** Where `tsc -p tsconfig.test.json` (run by `npm test`) compiles src/, test/ and examples/. */
export const compiledRoot = join(repoRoot, 'build/tsc/');

/**
 * The command line of a fixture, compiled to JavaScript: a generation starts in
 * plain `node` (no TypeScript loader to start), as a user's service would, so
 * upgrade times in tests are those of a real service, on a loaded machine too.
 */
export function fixtureCommand(fixture: string): string[] {
  return compiledCommand(join(fixturesDir, fixture));
}

/** The command line of an example (examples/), compiled to JavaScript. */
export function exampleCommand(example: string): string[] {
  return compiledCommand(join(repoRoot, 'examples', example));
}

function compiledCommand(source: string): string[] {
  const compiled = join(compiledRoot, relative(repoRoot, source)).replace(/\.ts$/, '.js');
  // tsc rewrites only what changed: a compiled file older than its own source is stale.
  if (!existsSync(compiled) || statSync(compiled).mtimeMs < statSync(source).mtimeMs) {
    throw new Error(`${compiled} is missing or older than the sources: run "npx tsc -p tsconfig.test.json" (npm test does)`);
  }
  return [compiled];
}

export interface Record_ {
  type: string;
  pid: number;
  gen: number;
  [key: string]: unknown;
}

export class Generations {
  readonly records: Record_[] = [];
  readonly stderr: string[] = [];
  readonly pids = new Set<number>();
  readonly root: ChildProcess;
  #waiters: { predicate: (r: Record_) => boolean; resolve: (r: Record_) => void }[] = [];

  /**
   * `ipc`: generation 0 gets an IPC channel, as a process manager's child does (pm2 fork mode).
   * `detached`: it leads a process group of its own (as a shell's job does), which a test may signal as a whole.
   */
  constructor(command: string[], env: Record<string, string> = {}, options: { ipc?: boolean; detached?: boolean } = {}) {
    unfinished.add(this);
    this.root = spawn(process.execPath, command, {
      cwd: repoRoot,
      env: { ...process.env, ...env },
      stdio: options.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
      detached: options.detached === true,
    });
    this.pids.add(this.root.pid!);
    onLines(this.root.stdout!, (line) => {
      let record: Record_;
      try {
        record = JSON.parse(line) as Record_;
      } catch {
        this.stderr.push(`stdout: ${line}`);
        return;
      }
      // When the harness read it, for debugging slow tests.
      Object.defineProperty(record, 'at', { value: performance.now(), enumerable: false });
      this.records.push(record);
      if (typeof record.pid === 'number') this.pids.add(record.pid);
      for (const w of [...this.#waiters]) {
        if (w.predicate(record)) {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          w.resolve(record);
        }
      }
    });
    this.root.stderr!.setEncoding('utf8').on('data', (chunk: string) => this.stderr.push(chunk));
  }

  /** Resolve with the first record (past or future) matching the predicate. */
  waitFor(predicate: (r: Record_) => boolean, timeoutMs = 30_000, what = 'record'): Promise<Record_> {
    const found = this.records.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = {
        predicate,
        resolve: (r: Record_) => {
          clearTimeout(timer);
          resolve(r);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last records: ${this.records.slice(-12).map((r) => JSON.stringify(r)).join(' ')}; stderr: ${this.stderr.join('').slice(-2000)}`));
      }, timeoutMs);
      this.#waiters.push(waiter);
    });
  }

  ready(gen: number, timeoutMs = 30_000): Promise<Record_> {
    return this.waitFor((r) => r.type === 'ready' && r.gen === gen, timeoutMs, `generation ${gen} ready`);
  }

  event(gen: number, event: string, timeoutMs = 30_000, since = 0): Promise<Record_> {
    return this.waitFor(
      (r) => r.type === 'event' && r.gen === gen && r.event === event && this.records.indexOf(r) >= since,
      timeoutMs,
      `generation ${gen} event ${event}`,
    );
  }

  /**
   * Kill every generation still alive, by pid: each one seen, and any child of
   * one of them that had no time to say who it is.
   */
  /**
   * SIGKILL every generation and whatever they started. Each is frozen
   * (SIGSTOP) first, and their children are looked for once all are stopped:
   * a generation that forked between a look and a kill would leave its child
   * running on its own (and serving: a new generation whose parent died
   * carries on alone, by design).
   */
  async killAll(): Promise<void> {
    unfinished.delete(this);
    for (let round = 0; round < 100; round++) {
      for (const pid of childrenOf(this.pids)) this.pids.add(pid);
      const running = [...this.pids].filter((pid) => ['R', 'S', 'D'].includes(statFields(pid)?.[0] ?? ''));
      if (running.length === 0) break;
      for (const pid of running) signal(pid, 'SIGSTOP');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    for (const pid of this.pids) if (isAlive(pid)) signal(pid, 'SIGKILL');
  }
}

/**
 * Generations whose test has not cleaned up yet. A test file that dies of an
 * uncaught exception never runs its teardowns: its worker's exit kills them
 * (a generation was found still running two hours after such a run).
 */
const unfinished = new Set<Generations>();
process.once('exit', () => {
  for (const generations of unfinished) for (const pid of [...generations.pids, ...childrenOf(generations.pids)]) signal(pid, 'SIGKILL');
});

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch {
    // gone meanwhile
  }
}

export function startGenerations(t: ExecutionContext, fixture: string, env: Record<string, string> = {}, options: { ipc?: boolean; detached?: boolean } = {}): Generations {
  const generations = new Generations(fixtureCommand(fixture), env, options);
  t.teardown(() => generations.killAll());
  return generations;
}

/** Generation 0 of an example, as a user would run it (importing 'ecdysis'). */
export function startExample(t: ExecutionContext, example: string, env: Record<string, string> = {}): Generations {
  const generations = new Generations(exampleCommand(example), env);
  t.teardown(() => generations.killAll());
  return generations;
}

/** Running and not a zombie. */
export const isAlive = isRunning;

export async function waitUntil(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Inode of the socket listening on 127.0.0.1:port, from /proc/net/tcp. */
export function listeningInode(port: number): number | undefined {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols[1] === `0100007F:${hexPort}` && cols[3] === '0A') return Number(cols[9]);
  }
  return undefined;
}

/** Inode of the UDP socket bound to 127.0.0.1:port, from /proc/net/udp. */
export function udpInode(port: number): number | undefined {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  for (const line of readFileSync('/proc/net/udp', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols[1] === `0100007F:${hexPort}`) return Number(cols[9]);
  }
  return undefined;
}

/** Inode of the Unix socket bound to `path` (listening or datagram), from /proc/net/unix. */
export function unixInode(path: string): number | undefined {
  // Accepted connections show their listener's path too: the listener is the
  // line with __SO_ACCEPTCON (0x10000) in Flags; a datagram socket is the only one.
  let bound: number | undefined;
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols[7] !== path) continue;
    if ((parseInt(cols[3]!, 16) & 0x10000) !== 0) return Number(cols[6]);
    bound ??= Number(cols[6]);
  }
  return bound;
}

/** Socket inodes a process holds open. */
export function socketInodes(pid: number): number[] {
  const inodes: number[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.push(Number(m[1]));
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/** Processes (transitively) started by these pids, that are still their children. */
export function childrenOf(pids: Iterable<number>): number[] {
  const parents = new Set(pids);
  const found: number[] = [];
  let added = true;
  while (added) {
    added = false;
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || parents.has(Number(entry))) continue;
      const ppid = Number(statFields(entry)?.[1]);
      if (parents.has(ppid)) {
        parents.add(Number(entry));
        found.push(Number(entry));
        added = true;
      }
    }
  }
  return found;
}

/**
 * Zombie children of a pid: processes whose parent it is, in state Z, and
 * reapable (a Node process's leader is a zombie while its other threads still
 * exit; no parent can reap it before they have).
 */
export function zombieChildren(ppid: number): number[] {
  const zombies: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(entry);
    if (fields?.[0] !== 'Z' || Number(fields[1]) !== ppid) continue;
    let threads = 0;
    try {
      threads = readdirSync(`/proc/${entry}/task`).length;
    } catch {
      continue; // reaped meanwhile
    }
    if (threads === 1) zombies.push(Number(entry));
  }
  return zombies;
}

/** SIGHUP the ready generation `gen`; wait until gen+1 is ready and gen has exited. */
export async function upgradeBySignal(g: Generations, gen: number): Promise<{ oldPid: number; newPid: number }> {
  const current = await g.ready(gen);
  if (gen > 0) await g.event(gen, 'parent-exited');
  process.kill(current.pid, 'SIGHUP');
  const next = await g.ready(gen + 1);
  await g.event(gen + 1, 'parent-exited');
  await waitUntil(() => !isAlive(current.pid), 10_000, `pid ${current.pid} exited`);
  return { oldPid: current.pid, newPid: next.pid };
}


/**
 * Upgrade by SIGHUP `count` times in a row, each once the previous old
 * generation has exited; an attempt whose new generation fails (a crash on
 * purpose) is followed by another. Returns the pids that served, in order.
 */
export async function upgrades(g: Generations, count: number, from = 0): Promise<number[]> {
  const pids: number[] = [];
  for (let gen = from; gen < from + count; gen++) {
    const current = await g.ready(gen);
    if (gen > 0) await g.event(gen, 'parent-exited');
    const since = g.records.length;
    process.kill(current.pid, 'SIGHUP');
    // An attempt whose new generation fails (on purpose) is followed by another.
    const outcome = await g.waitFor(
      (r) => r.gen === gen && r.pid === current.pid && (r.event === 'child-ready' || r.event === 'child-failed') && g.records.indexOf(r) >= since,
    );
    if (outcome.event === 'child-failed') process.kill(current.pid, 'SIGHUP');
    const next = await g.waitFor((r) => r.type === 'ready' && r.gen === gen + 1);
    await waitUntil(() => !isRunning(current.pid), 30_000, `generation ${gen} exited`);
    pids.push(next.pid);
  }
  return pids;
}
