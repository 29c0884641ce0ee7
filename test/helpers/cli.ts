/** Running the `ecdysis` CLI (compiled, as users run it) in a separate process. */
import { execFile, spawn } from 'node:child_process';
import { connect } from 'node:net';
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

/** One raw exchange with a control socket: write `data`, collect lines until `lines` arrived or the server closed. */
export function rawExchange(path: string, data: string | Buffer, lines = 1): Promise<string[]> {
  return new Promise((resolve) => {
    const socket = connect(path);
    let text = '';
    const done = () => {
      socket.destroy();
      resolve(text.split('\n').filter(Boolean));
    };
    socket.on('connect', () => socket.write(data));
    socket.on('data', (chunk) => {
      text += chunk.toString();
      if (text.split('\n').filter(Boolean).length >= lines) done();
    });
    socket.on('error', done);
    socket.on('close', done);
  });
}
