/**
 * The package as a user gets it: `npm pack` of this checkout (dist/ as
 * `npm test` just built it), installed into a fresh project in a temporary
 * folder with `npm install --ignore-scripts`, so no addon is built there and
 * only the shipped prebuilds can load.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from './generations.ts';

const execFileAsync = promisify(execFile);

export interface PackResult {
  tarball: string;
  /** Compressed size, bytes. */
  size: number;
  files: string[];
}

/** The npm that runs this test (npm_execpath under `npm test`), else the one on PATH. */
function npm(args: string[], cwd: string, env: Record<string, string> = {}): Promise<{ stdout: string; stderr: string }> {
  const npmCli = process.env.npm_execpath;
  const [command, fullArgs] = npmCli?.endsWith('.js') ? [process.execPath, [npmCli, ...args]] : ['npm', args];
  return execFileAsync(command, fullArgs, { cwd, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, npm_config_update_notifier: 'false', ...env } });
}

/** Pack without lifecycle scripts: `npm test` has built dist/ already, and prepare would rebuild the addon. */
export async function pack(into: string): Promise<PackResult> {
  const { stdout } = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', into], repoRoot);
  const [info] = JSON.parse(stdout) as { filename: string; size: number; files: { path: string }[] }[];
  return { tarball: join(into, info!.filename), size: info!.size, files: info!.files.map((f) => f.path) };
}

export interface Consumer {
  dir: string;
  /** What `npm install` printed. */
  installOutput: string;
  /** Runs `node args` in the project with this test's Node; resolves with its output, rejects on a non-zero exit. */
  node(args: string[], options?: { timeoutMs?: number }): Promise<{ stdout: string; stderr: string }>;
  /** Starts `node args` in the project, output collected. */
  start(args: string[]): ChildProcess & { output: () => string };
  write(file: string, text: string): void;
  remove(): void;
}

/**
 * A new ES-module project depending on `tarball` and `dependencies`,
 * installed with --ignore-scripts (as locked-down CI and container builds do).
 * --prefer-offline takes what npm has cached, so only what is new is fetched.
 */
export async function consumer(
  tarball: string,
  dependencies: string[],
  /** `scripts`: run install scripts (in the foreground, their output kept); `env`: for npm and every node started. */
  { scripts = false, env = {} }: { scripts?: boolean; env?: Record<string, string> } = {},
): Promise<Consumer> {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-consumer-'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }, null, 2));
  const installed = await npm(['install', scripts ? '--foreground-scripts' : '--ignore-scripts', '--prefer-offline', '--no-audit', '--no-fund', tarball, ...dependencies], dir, env);
  const children = new Set<ChildProcess>();
  const childEnv = { ...process.env, ...env };
  return {
    dir,
    installOutput: `${installed.stdout}${installed.stderr}`,
    node: (args, options = {}) => execFileAsync(process.execPath, args, { cwd: dir, env: childEnv, timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }),
    start(args) {
      const child = spawn(process.execPath, args, { cwd: dir, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
      let output = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (output += chunk));
      children.add(child);
      child.on('exit', () => children.delete(child));
      return Object.assign(child, { output: () => output });
    },
    write(file, text) {
      mkdirSync(dirname(join(dir, file)), { recursive: true });
      writeFileSync(join(dir, file), text);
    },
    remove() {
      for (const child of children) child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export { freePort } from '../../examples/lib/free-port.ts';

/** GET a URL until it answers (the service may still be starting), or fail after `timeoutMs`. */
export async function getWhenUp(url: string, timeoutMs = 30_000): Promise<{ status: number; body: string }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
      return { status: response.status, body: await response.text() };
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`${url} did not answer within ${timeoutMs} ms`, { cause: err });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** Resolves with the exit code (or signal name) of a child process. */
export function exited(child: ChildProcess, timeoutMs = 30_000): Promise<number | string> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`pid ${child.pid} still running after ${timeoutMs} ms`)), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal ?? -1);
    });
  });
}
