import test from 'ava';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fixtureCommand, repoRoot } from '../helpers/generations.ts';

test('inside a cluster worker (pm2 cluster mode too) Ecdysis.create refuses with ERR_ECDYSIS_UNSUPPORTED', async (t) => {
  const { stdout } = await promisify(execFile)(process.execPath, fixtureCommand('cluster.ts'), { cwd: repoRoot, timeout: 30_000 });
  const report = JSON.parse(stdout.trim()) as { code?: string; message: string };
  t.is(report.code, 'ERR_ECDYSIS_UNSUPPORTED');
  t.regex(report.message, /cluster worker/);
});
