/**
 * Every process the bench starts goes through here, so that it can be stopped
 * by pid on every path, failures included. Processes started by our processes
 * (ecdysis generations, pm2 workers, supervised workers) are found through the
 * lifecycle log instead, see lifecycle-log.ts.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

const started = new Set<ChildProcess>();

export function spawnTracked(command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit'], ...options });
  started.add(child);
  child.once('exit', () => started.delete(child));
  return child;
}

/** Resolves when the child has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once it is gone. */
export async function stopChild(child: ChildProcess, graceMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const gone = await Promise.race([exited(child).then(() => true), sleep(graceMs).then(() => false)]);
  if (!gone) {
    child.kill('SIGKILL');
    await exited(child);
  }
}

/**
 * SIGTERM a process that is not our child (a later ecdysis generation), wait up
 * to `graceMs` for it to go, then SIGKILL it.
 */
export async function terminatePid(pid: number, graceMs = 5_000): Promise<void> {
  if (!isAlive(pid)) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await sleep(10);
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
}

/** Kill whatever this module started and is still running. */
export function killAllTracked(): void {
  for (const child of started) child.kill('SIGKILL');
}

/** True while `pid` runs (a zombie waiting to be reaped counts as gone). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    // /proc/<pid>/stat: "pid (comm) S ...": the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

/** Runs `command` pinned to one CPU with taskset when the machine has it. */
export function pinned(cpu: number | undefined, command: string, args: string[]): [string, string[]] {
  if (cpu === undefined || !hasTaskset) return [command, args];
  return ['taskset', ['-c', String(cpu), command, ...args]];
}

export const hasTaskset = ['/usr/bin/taskset', '/bin/taskset'].some((p) => existsSync(p));
