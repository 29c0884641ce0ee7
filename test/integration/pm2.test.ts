/**
 * A real pm2 (a devDependency, its daemon in a PM2_HOME of our own: ~/.pm2 is
 * never touched) runs `ecdysis run -- node <service>` in fork mode: pm2 sees
 * one process through upgrades, and its stop lets a request in flight finish.
 * Generation 0 started by pm2 itself gets the warning, and shows why. The
 * tests share one daemon, so they run one at a time.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLoadProcess } from '../../examples/lib/load-runner.ts';
import { totalFailures } from '../../examples/lib/http-load.ts';
import { freePort } from '../../examples/lib/free-port.ts';
import { statFields } from '../../examples/lib/processes.ts';
import { cli, cliPath, rawExchange } from '../helpers/cli.ts';
import { childrenOf, fixtureCommand, isAlive, repoRoot, waitUntil, type Record_ } from '../helpers/generations.ts';
import { runCommand } from '../helpers/run.ts';
import { get } from '../helpers/http-get.ts';

/** What the app wrote, for a failure's message: its stderr (ecdysis run's and the service's) and its last records. */
function appOutput(errFile: string, outFile: string): string {
  const read = (file: string) => {
    try {
      return readFileSync(file, 'utf8').slice(-2_000);
    } catch {
      return '(none)';
    }
  };
  return `stderr: ${read(errFile)}\nlast records: ${read(outFile)}`;
}

const node = process.execPath;
const pm2Bin = join(repoRoot, 'node_modules/pm2/bin/pm2');
const service = fixtureCommand('http-service.ts')[0]!;
const home = mkdtempSync(join(tmpdir(), 'ecdysis-pm2-'));
/** Every pid seen (the daemon's, its apps', the generations'): killed at the end, whatever happened. */
const seen = new Set<number>();
let daemonStartMs = 0;

function pm2(args: string[], env: Record<string, string> = {}, cwd = home) {
  return runCommand(node, [pm2Bin, ...args], { env: { ...process.env, PM2_HOME: home, ...env }, cwd, timeoutMs: 120_000 });
}

interface App {
  name: string;
  pid: number;
  pm2_env: { status: string; restart_time: number; unstable_restarts: number };
}

/** What pm2 says of its app `name` (`pm2 jlist`). */
async function app(name: string): Promise<App> {
  const result = await pm2(['jlist']);
  const list = JSON.parse(result.stdout.slice(result.stdout.indexOf('['))) as App[];
  for (const entry of list) if (entry.pid > 0) seen.add(entry.pid);
  const found = list.find((entry) => entry.name === name);
  if (!found) throw new Error(`pm2 has no app ${name}: ${result.stdout}${result.stderr}`);
  return found;
}

/** The JSON lines pm2 wrote to an app's log (every generation writes to the stdout pm2 gave generation 0, or its successor inherited). */
function logRecords(path: string): Record_[] {
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const records = text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record_);
  for (const r of records) if (typeof r.pid === 'number') seen.add(r.pid);
  return records;
}

async function record(path: string, match: (r: Record_) => boolean, what: string): Promise<Record_> {
  await waitUntil(() => logRecords(path).some(match), 60_000, `${what} in ${path}`);
  return logRecords(path).find(match)!;
}

function appDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-pm2-app-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test.before(async () => {
  const started = performance.now();
  const result = await pm2(['ping']);
  if (result.code !== 0) throw new Error(`pm2 ping: ${result.stderr}`);
  seen.add(Number(readFileSync(join(home, 'pm2.pid'), 'utf8')));
  daemonStartMs = performance.now() - started;
});

test.after.always(async () => {
  const daemon = Number(readFileSync(join(home, 'pm2.pid'), 'utf8'));
  for (const pid of childrenOf([daemon])) seen.add(pid);
  await pm2(['kill']);
  for (const pid of [...seen, ...childrenOf(seen)]) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  rmSync(home, { recursive: true, force: true });
});

test.serial('pm2 start of `ecdysis run -- node service`: 5 upgrades through `ecdysis upgrade` under load, pm2 sees one process throughout (same pid, 0 restarts), 0 failed requests, no warning; `pm2 stop` lets the request in flight finish (200), and ecdysis run exits 0 without pm2\'s SIGKILL', async (t) => {
  const dir = appDir(t);
  const control = join(dir, 'control.sock');
  const out = join(dir, 'app.out');
  const started = performance.now();
  const start = await pm2(
    ['start', cliPath, '--name', 'app', '--interpreter', node, '--kill-timeout', '30000', '--wait-ready', '--listen-timeout', '60000', '--output', out, '--error', join(dir, 'app.err'), '--', 'run', '--', node, service],
    { FIXTURE_CONTROL: control },
  );
  const startMs = performance.now() - started;
  t.is(start.code, 0, start.stderr);
  const first = await record(out, (r) => r.type === 'ready' && r.gen === 0, 'generation 0 ready');
  // --wait-ready: pm2 start returns when ecdysis run says 'ready' on pm2's channel, else at --listen-timeout.
  t.true(startMs < 60_000, `pm2 start --wait-ready returned after ${Math.round(startMs)} ms`);
  const before = await app('app');
  const run = before.pid;
  t.like(before.pm2_env, { status: 'online', restart_time: 0 });
  t.is(Number(statFields(first.pid)![1]), run, "the service is the child of ecdysis run, pm2's process");

  const port = first.port as number;
  const load = startLoadProcess({ port, durationMs: 240_000 });
  t.teardown(() => load.kill());
  await load.started;
  for (let gen = 1; gen <= 5; gen++) {
    const upgrade = await cli(['upgrade', '--socket', control, '--timeout', '60000']);
    t.is(upgrade.code, 0, upgrade.stderr);
    await record(out, (r) => r.type === 'ready' && r.gen === gen, `generation ${gen} ready`);
    const now = await app('app');
    t.is(now.pid, run, `after upgrade ${gen}, pm2's process is still ecdysis run`);
    t.like(now.pm2_env, { status: 'online', restart_time: 0, unstable_restarts: 0 });
  }
  await record(out, (r) => r.type === 'event' && r.event === 'parent-exited' && r.gen === 5, 'generation 4 gone');
  const report = await load.stop();
  t.log(`pm2 daemon started in ${Math.round(daemonStartMs)} ms; pm2 start (--wait-ready) took ${Math.round(startMs)} ms; ${report.ok} requests ok of ${report.requests}; generations ${report.generations.join(',')}`);
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.deepEqual(logRecords(out).filter((r) => r.type === 'warning'), [], 'no warning in any generation');

  // A request in flight when pm2 stops the app: accepted (the status counts it) before the stop.
  const last = logRecords(out).find((r) => r.type === 'ready' && r.gen === 5)!;
  const slow = get(port, '/slow?ms=3000');
  for (let connections = 0; connections === 0; ) {
    const [line] = await rawExchange(control, 'status\n');
    connections = (JSON.parse(line!) as { listeners: { connections: number }[] }).listeners.reduce((n, l) => n + l.connections, 0);
  }
  const stopping = performance.now();
  const stop = await pm2(['stop', 'app']);
  const stopMs = performance.now() - stopping;
  t.is(stop.code, 0, stop.stderr);
  t.deepEqual(await slow, { status: 200, body: 'slow done\n' });
  t.like((await app('app')).pm2_env, { status: 'stopped', restart_time: 0 });
  t.false(isAlive(run));
  t.false(isAlive(last.pid));
  t.like(logRecords(out).find((r) => r.type === 'exiting' && r.gen === 5), { mode: 'stop', reason: 'SIGINT' });
  t.like(logRecords(out).find((r) => r.type === 'drained' && r.gen === 5)?.result, { timedOut: false, destroyed: 0, completed: 1 });
  const log = readFileSync(join(home, 'pm2.log'), 'utf8');
  t.regex(log, new RegExp(`App \\[app:\\d+\\] exited with code \\[0\\] via signal \\[SIGINT\\]`), appOutput(join(dir, 'app.err'), out));
  t.notRegex(log, new RegExp(`pid ${run} still alive after`), 'pm2 never had to SIGKILL it');
  t.log(`pm2 stop took ${Math.round(stopMs)} ms with a 3 s request in flight`);
  await pm2(['delete', 'app']);
});

test.serial('generation 0 started by pm2 itself: one ECDYSIS_PROCESS_MANAGER warning naming pm2 and `ecdysis run`; at the first upgrade pm2 starts the service again, and the copy fails to bind (measured)', async (t) => {
  const dir = appDir(t);
  const out = join(dir, 'direct.out');
  const port = await freePort();
  const start = await pm2(['start', service, '--name', 'direct', '--interpreter', node, '--output', out, '--error', join(dir, 'direct.err')], { FIXTURE_PORT: String(port) });
  t.is(start.code, 0, start.stderr);
  const first = await record(out, (r) => r.type === 'ready' && r.gen === 0, 'generation 0 ready');
  const warning = await record(out, (r) => r.type === 'warning' && r.pid === first.pid, 'the warning');
  t.is(warning.code, 'ECDYSIS_PROCESS_MANAGER');
  t.regex(warning.message as string, /^generation 0 \(pid \d+\) was started by pm2 \(app "direct", id \d+\): it takes generation 0 for the service/);
  t.regex(warning.message as string, /`pm2 start \.\/node_modules\/\.bin\/ecdysis --name app --kill-timeout 30000 -- run -- node server\.mjs`/);

  process.kill(first.pid, 'SIGHUP');
  const next = await record(out, (r) => r.type === 'ready' && r.gen === 1, 'generation 1 ready');
  const failed = await record(out, (r) => r.type === 'listen-failed', 'the copy pm2 started again failing');
  const now = await app('direct');
  await pm2(['delete', 'direct']);
  t.is(failed.code, 'EADDRINUSE');
  t.true(now.pm2_env.restart_time >= 1);
  t.is(logRecords(out).filter((r) => r.type === 'warning' && r.pid === next.pid).length, 0, 'generation 1 got no warning');
  t.is(logRecords(out).filter((r) => r.type === 'warning' && r.pid === first.pid).length, 1, 'generation 0 got exactly one');
  t.log(`measured: after one upgrade pm2 had restarted the app ${now.pm2_env.restart_time} times (each copy: bind EADDRINUSE), while generation 1 (pid ${next.pid}, not pm2's) served`);
  // pm2's delete may have taken generation 1 with it (its tree kill), or not: either way it goes.
  try {
    process.kill(next.pid, 'SIGKILL');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
});

test.serial('an ecosystem file: `script: "./node_modules/.bin/ecdysis", args: "run -- node service"` runs the same way: an upgrade by `pm2 sendSignal SIGHUP`, forwarded by ecdysis run, the same pid, a clean stop', async (t) => {
  const dir = appDir(t);
  const control = join(dir, 'control.sock');
  const out = join(dir, 'eco.out');
  mkdirSync(join(dir, 'node_modules/.bin'), { recursive: true });
  symlinkSync(cliPath, join(dir, 'node_modules/.bin/ecdysis'));
  const ecosystem = {
    apps: [
      {
        name: 'eco',
        script: './node_modules/.bin/ecdysis',
        args: `run -- ${node} ${service}`,
        interpreter: node,
        kill_timeout: 30_000,
        wait_ready: true,
        listen_timeout: 60_000,
        out_file: out,
        error_file: join(dir, 'eco.err'),
        env: { FIXTURE_CONTROL: control },
      },
    ],
  };
  writeFileSync(join(dir, 'ecosystem.config.cjs'), `module.exports = ${JSON.stringify(ecosystem, null, 2)};\n`);
  const start = await pm2(['start', 'ecosystem.config.cjs'], {}, dir);
  t.is(start.code, 0, start.stderr);
  await record(out, (r) => r.type === 'ready' && r.gen === 0, 'generation 0 ready');
  const run = (await app('eco')).pid;
  // pm2's own way to signal an app: to ecdysis run, which forwards SIGHUP to the service.
  const signal = await pm2(['sendSignal', 'SIGHUP', 'eco']);
  t.is(signal.code, 0, signal.stderr);
  await record(out, (r) => r.type === 'event' && r.event === 'parent-exited' && r.gen === 1, 'generation 0 gone');
  t.like(await app('eco'), { pid: run, pm2_env: { status: 'online', restart_time: 0 } });
  t.is((await pm2(['stop', 'eco'])).code, 0);
  t.like(logRecords(out).find((r) => r.type === 'exiting' && r.gen === 1), { mode: 'stop', reason: 'SIGINT' });
  t.false(isAlive(run));
  const log = readFileSync(join(home, 'pm2.log'), 'utf8');
  t.regex(log, /App \[eco:\d+\] exited with code \[0\] via signal \[SIGINT\]/, appOutput(join(dir, 'eco.err'), out));
  t.notRegex(log, new RegExp(`pid ${run} still alive after`), 'pm2 never had to SIGKILL it');
  t.deepEqual(logRecords(out).filter((r) => r.type === 'warning'), []);
  await pm2(['delete', 'eco']);
});

test.serial('shutdown_with_message: pm2 stops the app with a "shutdown" message on its IPC channel, no signal: ecdysis run stops the service with SIGTERM, the request in flight finishes (200), no SIGKILL', async (t) => {
  const dir = appDir(t);
  const control = join(dir, 'control.sock');
  const out = join(dir, 'msg.out');
  const ecosystem = {
    apps: [
      {
        name: 'msg',
        script: cliPath,
        args: `run -- ${node} ${service}`,
        interpreter: node,
        kill_timeout: 30_000,
        shutdown_with_message: true,
        out_file: out,
        error_file: join(dir, 'msg.err'),
        env: { FIXTURE_CONTROL: control },
      },
    ],
  };
  writeFileSync(join(dir, 'ecosystem.config.cjs'), `module.exports = ${JSON.stringify(ecosystem, null, 2)};\n`);
  const start = await pm2(['start', 'ecosystem.config.cjs'], {}, dir);
  t.is(start.code, 0, start.stderr);
  const ready = await record(out, (r) => r.type === 'ready' && r.gen === 0, 'generation 0 ready');
  const run = (await app('msg')).pid;
  const slow = get(ready.port as number, '/slow?ms=2000');
  for (let connections = 0; connections === 0; ) {
    const [line] = await rawExchange(control, 'status\n');
    connections = (JSON.parse(line!) as { listeners: { connections: number }[] }).listeners.reduce((n, l) => n + l.connections, 0);
  }
  const stop = await pm2(['stop', 'msg']);
  t.is(stop.code, 0, stop.stderr);
  t.deepEqual(await slow, { status: 200, body: 'slow done\n' });
  t.like(logRecords(out).find((r) => r.type === 'exiting' && r.gen === 0), { mode: 'stop', reason: 'SIGTERM' });
  t.false(isAlive(run));
  t.notRegex(readFileSync(join(home, 'pm2.log'), 'utf8'), new RegExp(`pid ${run} still alive after`), 'pm2 never had to SIGKILL it');
  await pm2(['delete', 'msg']);
});
