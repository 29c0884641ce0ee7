/**
 * Process managers that take generation 0 for the service, made real: a
 * supervisor that restarts its child whenever it exits (test/fixtures/
 * restart-supervisor.ts, standing for supervisord; started under the names
 * runsv and s6-supervise, for runit and s6), and containers (a PID namespace
 * of our own, whose PID 1 is the service, a shell, or `ecdysis run`). Without
 * `ecdysis run`, the first upgrade goes wrong as the warning says; with it, the
 * manager's child stays the same process through upgrades under load. pm2
 * itself runs in pm2.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startLoadProcess } from '../../examples/lib/load-runner.ts';
import { totalFailures } from '../../examples/lib/http-load.ts';
import { freePort } from '../../examples/lib/free-port.ts';
import { statFields } from '../../examples/lib/processes.ts';
import { cli, cliPath, rawExchange } from '../helpers/cli.ts';
import { fixtureCommand, Generations, isAlive, type Record_ } from '../helpers/generations.ts';
import { runCommand } from '../helpers/run.ts';
import { get } from '../helpers/http-get.ts';

const node = process.execPath;
const supervisor = fixtureCommand('restart-supervisor.ts')[0]!;
const service = fixtureCommand('http-service.ts')[0]!;
const guardrails = fixtureCommand('guardrails-service.ts')[0]!;

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-managers-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** `node` under another name (/proc/PID/comm is the name it was started by): runsv, s6-supervise. */
function nodeNamed(dir: string, name: string): string {
  const path = join(dir, name);
  symlinkSync(node, path);
  return path;
}

function start(t: ExecutionContext, command: string[], env: Record<string, string>): Generations {
  const g = new Generations(command, env);
  t.teardown(() => g.killAll());
  return g;
}

const warningsOf = (records: Record_[], pid?: number) => records.filter((r) => r.type === 'warning' && (pid === undefined || r.pid === pid));

/** `count` requests, each on a new connection: the x-generation and pid of each answer. */
async function answers(port: number, count: number): Promise<string[]> {
  const seen: string[] = [];
  for (let i = 0; i < count; i++) {
    seen.push(
      await new Promise<string>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/', agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve(String(res.headers['x-generation'])));
        })
          .on('error', reject)
          .end();
      }),
    );
  }
  return seen;
}

test('a supervisor that restarts its child, without ecdysis run: generation 0 gets one ECDYSIS_PROCESS_MANAGER warning; at the first upgrade the supervisor starts a second copy, which fails to bind (EADDRINUSE), again and again, while the new generation serves, orphaned', async (t) => {
  const port = await freePort();
  const g = start(t, [supervisor, '--', node, service], { FIXTURE_PORT: String(port), FIXTURE_MAX_STARTS: '4' });
  const first = await g.ready(0);
  const supervisorPid = g.records.find((r) => r.type === 'supervisor-start')!.pid;
  // Warnings are emitted on a later tick than create() (a module's top-level awaits may get to ready() first).
  const warning = await g.waitFor((r) => r.type === 'warning' && r.pid === first.pid, 30_000, 'the warning');
  t.is(warning.code, 'ECDYSIS_PROCESS_MANAGER');
  t.regex(warning.message as string, /was started by supervisord \(program "app"\): it takes generation 0 for the service/);
  t.regex(warning.message as string, /`command=\/srv\/app\/node_modules\/\.bin\/ecdysis run -- node server\.mjs`/);

  process.kill(first.pid, 'SIGHUP');
  const next = await g.ready(1);
  const gaveUp = await g.waitFor((r) => r.type === 'supervisor-gave-up', 60_000, 'the supervisor gave up');
  const exits = g.records.filter((r) => r.type === 'supervisor-exit');
  t.is(gaveUp.starts, 4);
  t.like(exits[0], { child: first.pid, code: 0 }, 'generation 0 exited after its upgrade, as it should');
  t.deepEqual(exits.slice(1).map((e) => e.code), [1, 1, 1], 'each copy the supervisor started again died');
  const failures = g.records.filter((r) => r.type === 'listen-failed');
  t.deepEqual(failures.map((f) => f.code), ['EADDRINUSE', 'EADDRINUSE', 'EADDRINUSE'], 'of EADDRINUSE on the port generation 1 serves');
  t.deepEqual(failures.map((f) => f.pid), exits.slice(1).map((e) => e.child));
  t.is(warningsOf(g.records, first.pid).length, 1, 'generation 0 got one warning');
  t.is(warningsOf(g.records, next.pid).length, 0, 'generation 1 got none');
  t.deepEqual(await answers(port, 5), ['1', '1', '1', '1', '1'], 'generation 1 still serves');
  t.not(Number(statFields(next.pid)![1]), supervisorPid, "generation 1 is not the supervisor's child: its stop no longer reaches it");
  t.log(`measured: after the upgrade the supervisor started ${exits.length - 1} copies in a row, each dead of EADDRINUSE; it gave up with generation 1 (pid ${next.pid}) serving outside its reach`);
});

test('the same with reusePort: the copy the supervisor starts again binds beside the new generation and answers part of the requests with the old code', async (t) => {
  const port = await freePort();
  const g = start(t, [supervisor, '--', node, service], { FIXTURE_PORT: String(port), FIXTURE_REUSE_PORT: '1', FIXTURE_MAX_STARTS: '2' });
  const first = await g.ready(0);
  process.kill(first.pid, 'SIGHUP');
  await g.ready(1);
  const copy = await g.waitFor((r) => r.type === 'ready' && r.gen === 0 && r.pid !== first.pid, 30_000, 'the copy started again');
  const seen = await answers(port, 200);
  const old = seen.filter((generation) => generation === '0').length;
  t.log(`measured: of 200 new connections after the upgrade, ${old} were answered by the copy the supervisor started again (generation 0 code, pid ${copy.pid}), ${200 - old} by generation 1`);
  t.true(old > 0 && old < 200);
  t.like(await g.waitFor((r) => r.type === 'warning' && r.pid === copy.pid), { code: 'ECDYSIS_PROCESS_MANAGER' }, 'the copy is a generation 0 too, and says so');
});

test('ecdysis run under the supervisor: 5 upgrades through `ecdysis upgrade` under load, the supervisor\'s child (ecdysis run) never exits and is never restarted, 0 failed requests, no warning; a SIGTERM to the supervisor, which stops the whole process group (stopasgroup), lets a request in flight finish and ecdysis run exits 0', async (t) => {
  const control = join(tempDir(t), 'control.sock');
  const g = start(t, [supervisor, '--', node, cliPath, 'run', '--', node, service], { FIXTURE_CONTROL: control, FIXTURE_STOP_AS_GROUP: '1' });
  const first = await g.ready(0);
  const { pid: supervisorPid, child: run } = g.records.find((r) => r.type === 'supervisor-start')! as Record_ & { child: number };
  t.is(Number(statFields(first.pid)![1]), run, 'the service is the child of ecdysis run');
  const load = startLoadProcess({ port: first.port as number, durationMs: 240_000 });
  t.teardown(() => load.kill());
  await load.started;
  for (let gen = 1; gen <= 5; gen++) {
    const result = await cli(['upgrade', '--socket', control, '--timeout', '60000']);
    t.is(result.code, 0, result.stderr);
    await g.ready(gen);
    t.true(isAlive(run), `ecdysis run still runs after upgrade ${gen}`);
  }
  await g.event(5, 'parent-exited');
  const report = await load.stop();
  t.log(`${report.ok} requests ok of ${report.requests}; generations ${report.generations.join(',')}`);
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.deepEqual(g.records.filter((r) => r.type === 'supervisor-exit'), [], 'the supervisor saw no exit');
  t.is(g.records.filter((r) => r.type === 'supervisor-start').length, 1);
  t.deepEqual(warningsOf(g.records), [], 'no warning in any generation');

  // A request in flight, accepted (the status counts it) before the stop.
  const slow = get(first.port as number, '/slow?ms=2000');
  for (let connections = 0; connections === 0; ) {
    const [line] = await rawExchange(control, 'status\n');
    connections = (JSON.parse(line!) as { listeners: { connections: number }[] }).listeners.reduce((n, l) => n + l.connections, 0);
  }
  process.kill(supervisorPid, 'SIGTERM');
  t.deepEqual(await slow, { status: 200, body: 'slow done\n' }, 'the service had the SIGTERM once: from ecdysis run, not also from the group signal');
  const exit = await g.waitFor((r) => r.type === 'supervisor-exit', 30_000, 'ecdysis run exited');
  t.like(exit, { child: run, code: 0 });
  t.like(g.records.find((r) => r.type === 'exiting' && r.gen === 5), { mode: 'stop', reason: 'SIGTERM' });
  t.like(g.records.find((r) => r.type === 'drained' && r.gen === 5)?.result, { timedOut: false, destroyed: 0 });
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} to the whole process group of ecdysis run (supervisord's stopasgroup; a terminal's Ctrl-C): the service, in a session of its own, has it once, from ecdysis run, and a request in flight finishes`, async (t) => {
    const control = join(tempDir(t), 'control.sock');
    const g = start(t, [supervisor, '--', node, cliPath, 'run', '--', node, service], { FIXTURE_CONTROL: control, FIXTURE_STOP_AS_GROUP: '1' });
    const first = await g.ready(0);
    const run = (g.records.find((r) => r.type === 'supervisor-start') as Record_ & { child: number }).child;
    const groups = [statFields(first.pid)![3], statFields(run)![3]];
    const slow = get(first.port as number, '/slow?ms=1000');
    for (let connections = 0; connections === 0; ) {
      const [line] = await rawExchange(control, 'status\n');
      connections = (JSON.parse(line!) as { listeners: { connections: number }[] }).listeners.reduce((n, l) => n + l.connections, 0);
    }
    process.kill(g.root.pid!, signal);
    t.deepEqual(await slow, { status: 200, body: 'slow done\n' });
    t.like(await g.waitFor((r) => r.type === 'supervisor-exit', 30_000, 'ecdysis run exited'), { child: run, code: 0 });
    t.like(g.records.find((r) => r.type === 'drained')?.result, { timedOut: false, destroyed: 0, completed: 1 });
    t.not(groups[0], groups[1], 'the service was not in the process group of ecdysis run');
  });
}

interface Case {
  title: string;
  command: string[];
  env?: Record<string, string>;
  /** The warning expected: its message, or none. */
  warning?: RegExp;
}

/** Each manager as it starts a generation 0 that stops by itself, without and with `ecdysis run` in between. */
function cases(dir: string): Case[] {
  const runsv = nodeNamed(dir, 'runsv');
  const s6 = nodeNamed(dir, 's6-supervise');
  const systemd = join(dir, 'systemd');
  symlinkSync('/bin/sh', systemd);
  const once = { FIXTURE_MAX_STARTS: '1' };
  const notSupervisord = { ...once, FIXTURE_SUPERVISOR_ENV: '0' };
  const run = [node, cliPath, 'run', '--'];
  const pidNamespace = ['unshare', '--pid', '--fork', '--mount-proc'];
  const shell = (command: string[]) => ['/bin/sh', '-c', `${command.map((word) => `'${word}'`).join(' ')}; exit $?`];
  return [
    { title: 'supervisord', command: [node, supervisor, '--', node, guardrails], env: once, warning: /was started by supervisord \(program "app"\)/ },
    { title: 'runit (runsv as the parent)', command: [runsv, supervisor, '--', node, guardrails], env: notSupervisord, warning: /was started by runit's runsv \(pid \d+\)/ },
    { title: 'runit, through a run script that does not exec', command: [runsv, supervisor, '--', ...shell([node, guardrails])], env: notSupervisord, warning: /was started by runit's runsv/ },
    { title: 's6 (s6-supervise as the parent)', command: [s6, supervisor, '--', node, guardrails], env: notSupervisord, warning: /was started by s6-supervise \(pid \d+\)/ },
    { title: 'a container without an init (the service is PID 1)', command: [...pidNamespace, node, guardrails], warning: /is PID 1 \(a container without an init\): .*the kernel kills every other process/ },
    { title: "a container whose PID 1 is a shell (Docker's shell form)", command: [...pidNamespace, ...shell([node, guardrails])], warning: /was started by sh as PID 1/ },
    { title: 'a PID 1 that is systemd', command: [...pidNamespace, systemd, '-c', `'${node}' '${guardrails}'; exit $?`] },
    { title: 'supervisord, then ecdysis run', command: [node, supervisor, '--', ...run, node, guardrails], env: once },
    { title: 'runit, then ecdysis run', command: [runsv, supervisor, '--', ...run, node, guardrails], env: notSupervisord },
    { title: 'a container whose PID 1 is ecdysis run', command: [...pidNamespace, ...run, node, guardrails] },
  ];
}

test('each manager: a generation 0 under it gets exactly one ECDYSIS_PROCESS_MANAGER warning naming `ecdysis run`, and none when `ecdysis run` is in between (or PID 1 is systemd)', async (t) => {
  const dir = tempDir(t);
  for (const { title, command, env, warning } of cases(dir)) {
    const result = await runCommand(command[0]!, command.slice(1), { env: { ...process.env, ...env }, timeoutMs: 60_000 });
    t.is(result.code, 0, `${title}: ${result.stderr}`);
    const records = result.stdout
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record_);
    t.true(records.some((r) => r.type === 'done'), `${title}: the service ran`);
    const warnings = warningsOf(records);
    if (!warning) {
      t.deepEqual(warnings, [], title);
      continue;
    }
    t.deepEqual(warnings.map((w) => w.code), ['ECDYSIS_PROCESS_MANAGER'], title);
    t.regex(warnings[0]!.message as string, warning, title);
    t.regex(warnings[0]!.message as string, /Start the service under `ecdysis run`.*: `.*node_modules\/\.bin\/ecdysis\W+run\W/, title);
  }
});
