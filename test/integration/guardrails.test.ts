/**
 * The easy mistakes, made for real: generation 0 started by the tsx CLI and by
 * `npm start` (wrappers that exit with it), and a generation 0 that never calls
 * ready(). Each is a warning with a code, saying what to do instead.
 */
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureCommand, repoRoot, startGenerations } from '../helpers/generations.ts';
import { runCommand, type CommandResult } from '../helpers/run.ts';

interface Record_ {
  type: string;
  code?: string;
  message?: string;
  [key: string]: unknown;
}

function records(result: CommandResult): Record_[] {
  return result.stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record_);
}

const fixture = fixtureCommand('guardrails-service.ts')[0]!;
const env = { ...process.env, FIXTURE_UPGRADE_TIMEOUT: '1000', FIXTURE_LINGER_MS: '1500' };

test('started by the tsx CLI: an ECDYSIS_WRAPPER_PARENT warning names it and the fix', async (t) => {
  const result = await runCommand(process.execPath, [join(repoRoot, 'node_modules/tsx/dist/cli.mjs'), fixture], { env, timeoutMs: 60_000 });
  t.is(result.code, 0, result.stderr);
  const warnings = records(result).filter((r) => r.type === 'warning');
  t.is(warnings.length, 1, JSON.stringify(warnings));
  t.is(warnings[0]!.code, 'ECDYSIS_WRAPPER_PARENT');
  t.regex(warnings[0]!.message!, /started by the tsx CLI \(pid \d+\), which exits when generation 0 exits/);
  t.regex(warnings[0]!.message!, /node --import tsx server\.ts/);
});

test('started by `npm start` (npm, then sh -c): the warning names npm', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-npm-start-'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'wrapped', private: true, scripts: { start: `"${process.execPath}" "${fixture}"` } }));
  const result = await runCommand('npm', ['start', '--silent'], { env, cwd: dir, timeoutMs: 60_000 });
  t.is(result.code, 0, result.stderr);
  const warnings = records(result).filter((r) => r.type === 'warning');
  t.deepEqual(warnings.map((w) => w.code), ['ECDYSIS_WRAPPER_PARENT']);
  t.regex(warnings[0]!.message!, /started by npm \(pid \d+\)/);
});

test('started by node itself, ready() in time: no warning at all, also after upgradeTimeout has passed', async (t) => {
  const result = await runCommand(process.execPath, [fixture], { env, timeoutMs: 60_000 });
  t.is(result.code, 0, result.stderr);
  const all = records(result);
  t.true(all.some((r) => r.type === 'done'));
  t.deepEqual(all.filter((r) => r.type === 'warning'), []);
  t.notRegex(result.stderr, /Warning/);
});

test('generation 0 never calls ready(): an ECDYSIS_NOT_READY warning after upgradeTimeout says what is wrong; SIGTERM still stops it', async (t) => {
  const g = startGenerations(t, 'guardrails-service.ts', { FIXTURE_UPGRADE_TIMEOUT: '1000', FIXTURE_NEVER_READY: '1' });
  const created = await g.waitFor((r) => r.type === 'created');
  const warning = await g.waitFor((r) => r.type === 'warning');
  t.is(warning.code, 'ECDYSIS_NOT_READY');
  t.regex(warning.message as string, /ready\(\) has not been called 1000 ms \(upgradeTimeout\) after Ecdysis\.create\(\)/);
  t.regex(warning.message as string, /no listener accepts/);
  process.kill(created.pid, 'SIGTERM');
  t.like(await g.waitFor((r) => r.type === 'exiting'), { mode: 'stop' });
});
