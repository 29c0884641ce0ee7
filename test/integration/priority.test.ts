/**
 * niceWhileStarting: each next generation starts nicer than the serving one
 * and serves at the serving one's priority once ready; a process that could
 * not give that priority back (no CAP_SYS_NICE, RLIMIT_NICE 0) does not use
 * the option, and says so.
 */
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import test from 'ava';
import { statFields } from '../../examples/lib/processes.ts';
import { canRestoreNice } from '../../src/internal/priority.ts';
import { compiledRoot, startGenerations, upgrades } from '../helpers/generations.ts';
import { runCommand } from '../helpers/run.ts';

/** The nice value of a running process, read from outside (/proc/<pid>/stat, field 19). */
function niceOf(pid: number): number {
  return Number(statFields(pid)![16]);
}

/** The distinct nice values of a process's threads (/proc/<pid>/task/<tid>/stat). */
function threadNices(pid: number): number[] {
  const values = readdirSync(`/proc/${pid}/task`).map((tid) => {
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
  return [...new Set(values)].sort((a, b) => a - b);
}

test('each new generation starts 10 nicer and serves at its parent\'s priority once ready', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_NICE: '10' });
  const first = await g.ready(0);
  t.is(niceOf(first.pid), 0);
  const pids = await upgrades(g, 3);
  // Each generation said at create() what it started at; then served at 0.
  t.deepEqual(g.records.filter((r) => r.type === 'nice').map((r) => [r.gen, r.nice]), [[0, 0], [1, 10], [2, 10], [3, 10]]);
  t.is(niceOf(pids.at(-1)!), 0);
  // Every thread of it: a nice value is a thread's (V8's and libuv's threads, started niced with it, serve too).
  t.deepEqual(threadNices(pids.at(-1)!), [0]);
  t.false(g.stderr.join('').includes('ECDYSIS_NICE_UNAVAILABLE'));
});

test('workers with niceWhileStarting: a new group starts 10 nicer, and every thread of every worker serves at the primary\'s priority once ready', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_WORKERS: '2', FIXTURE_NICE: '10' });
  // A group 10 nicer than everything else on a busy machine starts slowly by design (in a loaded run
  // beside two busy loops, worker 0 took 9.5 s to read its hello): wait as long as the upgrade may take
  // (upgradeTimeout, 60 s by default), not the helper's 30 s.
  const patience = 75_000;
  const ready = (gen: number) => g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.role === 'primary', patience);
  const workers = async (gen: number) => Promise.all([0, 1].map((index) => g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.worker === index, patience)));
  await ready(0);
  process.kill((await ready(0)).pid, 'SIGHUP');
  await ready(1);
  const started = await workers(1);
  // Each worker said at create() what it started at (the fixture's 'nice' record).
  for (const worker of started) t.is(g.records.find((r) => r.type === 'nice' && r.pid === worker.pid)?.nice, 10);
  for (const worker of started) t.deepEqual(threadNices(worker.pid), [0], `worker ${worker.worker} (pid ${worker.pid})`);
  const spawned = g.records.filter((r) => r.type === 'event' && r.event === 'worker-spawned');
  t.is(spawned.length, 4);
});

test('without the right to give the priority back (nobody, RLIMIT_NICE 0): a coded warning, and the next generation starts at the serving one\'s priority', async (t) => {
  // Generation 0 runs as nobody: a script in a directory it can read, the library compiled from src/.
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-nice-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const script = join(dir, 'service.mjs');
  writeFileSync(
    script,
    [
      "import { getPriority } from 'node:os';",
      'const { Ecdysis } = await import(process.env.ECDYSIS_ENTRY);',
      "process.on('warning', (w) => console.log(JSON.stringify({ type: 'warning', code: w.code })));",
      'const ecdysis = await Ecdysis.create({ niceWhileStarting: 10, upgradeOn: [], stopOn: [] });',
      "console.log(JSON.stringify({ type: 'nice', gen: ecdysis.generation, nice: getPriority() }));",
      'await ecdysis.ready();',
      "if (ecdysis.generation === 0) console.log(JSON.stringify({ type: 'upgraded', pid: await ecdysis.upgrade() }));",
      'else ecdysis.stop();',
      'await ecdysis.drain();',
    ].join('\n'),
    { mode: 0o644 },
  );
  const result = await runCommand('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, script], {
    env: { ...process.env, ECDYSIS_ENTRY: pathToFileURL(join(compiledRoot, 'src/index.js')).href },
    timeoutMs: 60_000,
  });
  const records = result.stdout.split('\n').filter(Boolean).map((line) => JSON.parse(line) as { type: string; code?: string; gen?: number; nice?: number });
  t.deepEqual(records.filter((r) => r.type === 'warning').map((r) => r.code), ['ECDYSIS_NICE_UNAVAILABLE'], result.stderr);
  t.deepEqual(records.filter((r) => r.type === 'nice').map((r) => [r.gen, r.nice]), [[0, 0], [1, 0]], result.stderr);
  t.true(records.some((r) => r.type === 'upgraded'), result.stderr);
});

test('the right to give the priority back: CAP_SYS_NICE, or an RLIMIT_NICE that reaches the nice value', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-nice-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const proc = (capEff: string, limit: string) => {
    writeFileSync(join(dir, 'status'), `Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t${capEff}\nCapBnd:\t000001ffffffffff\n`);
    writeFileSync(join(dir, 'limits'), `Limit                     Soft Limit           Hard Limit           Units\nMax nice priority         ${limit}                    ${limit}                    \n`);
    return dir;
  };
  t.true(canRestoreNice(0, proc('000001ffffffffff', '0')));
  t.true(canRestoreNice(0, proc('0000000000800000', '0'))); // CAP_SYS_NICE alone
  t.false(canRestoreNice(0, proc('00000000007fffff', '0'))); // every capability below it
  t.false(canRestoreNice(0, proc('0000000000000000', '0')));
  t.true(canRestoreNice(0, proc('0000000000000000', '20')));
  t.false(canRestoreNice(0, proc('0000000000000000', '19')));
  t.true(canRestoreNice(5, proc('0000000000000000', '15')));
  t.true(canRestoreNice(0, proc('0000000000000000', 'unlimited')));
  t.false(canRestoreNice(0, join(dir, 'missing')));
});
