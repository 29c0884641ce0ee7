/** What the numbers were measured on. */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { hasTaskset } from '../lib/children.ts';

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** The library measured: the repository's commit, and whether src/ or native/ had uncommitted changes. */
  library: string;
  pm2: string;
  autocannon: string;
  taskset: boolean;
  /** 1-minute load average when the run started: anything else running skews the numbers. */
  loadAverage: number;
  date: string;
}

const require = createRequire(import.meta.url);
const versionOf = (name: string) => (require(`${name}/package.json`) as { version: string }).version;

export function describeMachine(): Machine {
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: `Linux ${release()}`,
    node: process.version,
    library: libraryVersion(),
    pm2: versionOf('pm2'),
    autocannon: versionOf('autocannon'),
    taskset: hasTaskset,
    loadAverage: loadavg()[0]!,
    date: new Date().toISOString(),
  };
}

function libraryVersion(): string {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: new URL('../../..', import.meta.url), encoding: 'utf8' }).trim();
  try {
    const commit = git('rev-parse', '--short', 'HEAD');
    return git('status', '--porcelain', '--', 'src', 'native') === '' ? commit : `${commit} + uncommitted changes`;
  } catch {
    return 'unknown (no git)';
  }
}
