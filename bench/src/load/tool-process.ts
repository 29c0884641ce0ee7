/**
 * Runs one of the throughput tools of this folder in a process of its own
 * (optionally pinned to a CPU), passing its options as one JSON argument and
 * reading its result from the last JSON line it prints.
 */
import { fileURLToPath } from 'node:url';
import { exited, pinned, spawnTracked } from '../lib/children.ts';

export async function runToolProcess<Result>(script: string, options: object, cpu?: number): Promise<Result> {
  const path = fileURLToPath(new URL(script, import.meta.url));
  const [command, args] = pinned(cpu, process.execPath, ['--import', 'tsx', path, JSON.stringify(options)]);
  const child = spawnTracked(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  await exited(child);
  const line = out.trim().split('\n').reverse().find((l) => l.startsWith('{'));
  if (!line) throw new Error(`${script} exited with ${child.exitCode ?? child.signalCode} and no result`);
  return JSON.parse(line) as Result;
}
