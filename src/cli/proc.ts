/** What the CLI reads of other processes, from /proc. */
import { readFileSync, readdirSync } from 'node:fs';

/** The fields of /proc/PID/stat after the command name: [state, ppid, ...]. */
export function stat(pid: number | string): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/**
 * Running, or still exiting: a multi-threaded process (Node) shows its leader
 * as a zombie while its other threads exit, and it cannot be reaped, nor its
 * status read, until the last one has.
 */
export function alive(pid: number | string): boolean {
  const fields = stat(pid);
  if (fields === undefined) return false;
  return fields[0] !== 'Z' || readdirSafe(`/proc/${pid}/task`).length > 1;
}

export function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
