/** What the numbers were measured on. */
import { execFileSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { hasTaskset } from '../lib/children.ts';
import { machineBusy } from '../lib/proc.ts';

export interface Machine {
  cpu: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** The library measured: the repository's commit, whether src/ or native/ had uncommitted changes, when ../dist was built. */
  library: string;
  pm2: string;
  autocannon: string;
  taskset: boolean;
  /** 1-minute load average when the run started: anything else running skews the numbers. */
  loadAverage: number;
  /** Fraction of the CPUs busy during one second before the run started. */
  busyBefore: number;
  date: string;
}

const require = createRequire(import.meta.url);
const versionOf = (name: string) => (require(`${name}/package.json`) as { version: string }).version;

export async function describeMachine(): Promise<Machine> {
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
    busyBefore: await machineBusy(1_000),
    date: new Date().toISOString(),
  };
}

function libraryVersion(): string {
  const root = new URL('../../..', import.meta.url);
  const git = (...args: string[]) => execFileSync('git', args, { cwd: root, encoding: 'utf8' }).trim();
  const built = `dist built ${statSync(new URL('dist/index.js', root)).mtime.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
  try {
    const commit = git('rev-parse', '--short', 'HEAD');
    const dirty = git('status', '--porcelain', '--', 'src', 'native') !== '';
    return `${commit}${dirty ? ' + uncommitted changes' : ''} (${built})`;
  } catch {
    return `unknown commit (${built})`;
  }
}
