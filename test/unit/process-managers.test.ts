/**
 * Which process managers generation 0 can tell it runs under, from a process
 * table and an environment given to it (real managers, and real processes
 * standing for them, run in test/integration/process-managers.test.ts and
 * pm2.test.ts), and which signals `ecdysis run` leaves to its manager.
 */
import test from 'ava';
import { findProcessManager, RUN_ENV, warnIfManaged, type ProcessReader } from '../../src/internal/process-managers.ts';
import { signalledByManager } from '../../src/cli/run.ts';
import type { ProcessInfo } from '../../src/internal/guardrails.ts';

/** A process table: pid -> [ppid, comm, argv]. */
function table(rows: Record<number, [number, string, string[]]>): ProcessReader {
  return {
    info: (pid) => (rows[pid] ? ({ pid, ppid: rows[pid][0], argv: rows[pid][2] } satisfies ProcessInfo) : undefined),
    comm: (pid) => rows[pid]?.[1],
  };
}

const host = table({
  1: [0, 'systemd', ['/sbin/init']],
  100: [1, 'PM2 v7.0.4: God', ['PM2 v7.0.4: God Daemon (/root/.pm2)']],
  200: [1, 'supervisord', ['/usr/bin/python3', '/usr/bin/supervisord']],
  300: [1, 'runsv', ['runsv', 'app']],
  301: [300, 'sh', ['/bin/sh', './run']],
  400: [1, 's6-supervise', ['s6-supervise', 'app']],
  500: [1, 'node', ['node', '/app/node_modules/.bin/ecdysis', 'run', '--', 'node', 'server.mjs']],
  501: [500, 'sh', ['sh', '-c', 'node server.mjs']],
  600: [1, 'bash', ['-bash']],
  700: [1, 'runsv', ['runsv', 'app']],
  701: [700, 'chpst', ['chpst', '-u', 'app', 'node', 'server.mjs']],
});
const pm2Env = { pm_id: '0', pm_exec_path: '/app/server.mjs', name: 'web', PM2_HOME: '/root/.pm2', treekill: 'true' };
const supervisorEnv = { SUPERVISOR_ENABLED: '1', SUPERVISOR_PROCESS_NAME: 'web', SUPERVISOR_GROUP_NAME: 'web', SUPERVISOR_SERVER_URL: 'unix:///run/supervisor.sock' };

test('findProcessManager: pm2 and supervisord by their variables, runit and s6 by the parent (or the shell\'s parent), a container by PID 1', (t) => {
  t.like(findProcessManager(pm2Env, { pid: 101, ppid: 100 }, host), { kind: 'pm2', how: 'was started by pm2 (app "web", id 0)' });
  t.like(findProcessManager(supervisorEnv, { pid: 201, ppid: 200 }, host), { kind: 'supervisord', how: 'was started by supervisord (program "web")' });
  t.like(findProcessManager({}, { pid: 302, ppid: 300 }, host), { kind: 'runit', how: "was started by runit's runsv (pid 300)" });
  t.like(findProcessManager({}, { pid: 302, ppid: 301 }, host), { kind: 'runit' }, 'a run script that does not exec');
  t.like(findProcessManager({}, { pid: 401, ppid: 400 }, host), { kind: 's6', how: 'was started by s6-supervise (pid 400)' });
  t.like(findProcessManager({}, { pid: 1, ppid: 0 }, host), { kind: 'container', how: 'is PID 1 (a container without an init)' });
  const container = table({ 1: [0, 'tini', ['/sbin/tini', '--', 'node', 'server.mjs']], 7: [1, 'sh', ['/bin/sh', '-c', 'node server.mjs']] });
  t.like(findProcessManager({}, { pid: 7, ppid: 1 }, container), { kind: 'container', how: 'was started by tini as PID 1' });
  t.like(findProcessManager({}, { pid: 8, ppid: 7 }, container), { kind: 'container' }, 'through a shell');
  for (const manager of [findProcessManager(pm2Env, { pid: 101, ppid: 100 }, host), findProcessManager({}, { pid: 1, ppid: 0 }, host)]) t.regex(manager!.fix, /ecdysis/);
});

test('findProcessManager: none under systemd (PID 1 as the parent), another init, a login shell, or an exec-ing wrapper that is not a supervisor', (t) => {
  t.is(findProcessManager({ INVOCATION_ID: 'x' }, { pid: 10, ppid: 1 }, host), undefined, 'a systemd service');
  const sysv = table({ 1: [0, 'init', ['/sbin/init']] });
  t.is(findProcessManager({}, { pid: 10, ppid: 1 }, sysv), undefined, 'a daemon re-parented to a host\'s init');
  t.is(findProcessManager({}, { pid: 10, ppid: 1 }, table({})), undefined, 'PID 1 cannot be read');
  t.is(findProcessManager({}, { pid: 601, ppid: 600 }, host), undefined, 'a shell started by systemd');
  t.is(findProcessManager({}, { pid: 702, ppid: 701 }, host), undefined, 'a parent that is neither a shell nor a supervisor ends the search');
  t.is(findProcessManager({}, { pid: 11, ppid: 99 }, host), undefined, 'a parent that cannot be read');
});

test('findProcessManager: under `ecdysis run` (RUN_ENV names the parent or an ancestor) nothing is found, whatever the manager; a RUN_ENV naming another process counts for nothing', (t) => {
  const run = { [RUN_ENV]: '500' };
  t.is(findProcessManager({ ...pm2Env, ...run }, { pid: 502, ppid: 500 }, host), undefined, 'pm2 runs ecdysis run');
  t.is(findProcessManager({ ...supervisorEnv, ...run }, { pid: 502, ppid: 501 }, host), undefined, 'through a shell');
  t.is(findProcessManager({ [RUN_ENV]: '1' }, { pid: 9, ppid: 1 }, table({ 1: [0, 'node', ['node', 'ecdysis.js', 'run']] })), undefined, 'ecdysis run as PID 1');
  t.like(findProcessManager({ ...pm2Env, [RUN_ENV]: '12345' }, { pid: 101, ppid: 100 }, host), { kind: 'pm2' }, 'an inherited RUN_ENV that names no ancestor');
  t.like(findProcessManager({ ...pm2Env, [RUN_ENV]: '0x1f4' }, { pid: 101, ppid: 100 }, host), { kind: 'pm2' });
});

test('warnIfManaged: one ECDYSIS_PROCESS_MANAGER warning naming the manager and `ecdysis run`; RUN_ENV is taken out of the environment', async (t) => {
  const warnings: Error[] = [];
  const listener = (warning: Error) => warnings.push(warning);
  process.on('warning', listener);
  t.teardown(() => process.off('warning', listener));
  const env: NodeJS.ProcessEnv = { ...supervisorEnv, [RUN_ENV]: '4242' };
  t.true(warnIfManaged(env, { pid: 201, ppid: 200 }, host));
  t.false(RUN_ENV in env);
  const runEnv: NodeJS.ProcessEnv = { ...supervisorEnv, [RUN_ENV]: '500' };
  t.false(warnIfManaged(runEnv, { pid: 502, ppid: 500 }, host));
  t.false(RUN_ENV in runEnv);
  await new Promise((resolve) => setImmediate(resolve));
  t.is(warnings.length, 1);
  t.is((warnings[0] as Error & { code?: string }).code, 'ECDYSIS_PROCESS_MANAGER');
  t.regex(warnings[0]!.message, /^generation 0 \(pid 201\) was started by supervisord \(program "web"\)/);
  t.regex(warnings[0]!.message, /`command=\/srv\/app\/node_modules\/\.bin\/ecdysis run -- node server\.mjs`/);
});

test('signalledByManager: pm2 with treekill sends its kill signal (SIGINT, or PM2_KILL_SIGNAL) to the whole tree; without treekill, or not pm2, every signal is forwarded', (t) => {
  t.deepEqual([...signalledByManager(pm2Env)], ['SIGINT']);
  t.deepEqual([...signalledByManager({ ...pm2Env, PM2_KILL_SIGNAL: 'SIGTERM' })], ['SIGTERM']);
  t.deepEqual([...signalledByManager({ ...pm2Env, treekill: 'false' })], []);
  t.deepEqual([...signalledByManager({ treekill: 'true' })], []);
  t.deepEqual([...signalledByManager(supervisorEnv)], []);
});
