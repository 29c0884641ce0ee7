/** Running the `ecdysis` CLI (compiled, as users run it) in a separate process. */
import { execFile, spawn } from 'node:child_process';
import { join } from 'node:path';
import { compiledRoot } from './generations.ts';

export const cliPath = join(compiledRoot, 'src/cli/ecdysis.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run `ecdysis ...args` to its end (bounded by `timeoutMs`). */
export function cli(args: string[], options: { timeoutMs?: number; prefix?: string[] } = {}): Promise<CliResult> {
  const command = [...(options.prefix ?? []), process.execPath, cliPath, ...args];
  return new Promise((resolve) => {
    execFile(command[0]!, command.slice(1), { timeout: options.timeoutMs ?? 120_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** Start `ecdysis ...args` in the background. */
export function startCli(args: string[], env: Record<string, string> = {}) {
  return spawn(process.execPath, [cliPath, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}
