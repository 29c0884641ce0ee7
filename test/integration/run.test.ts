/**
 * `ecdysis run --notify` under a stand-in service manager: a notify socket the
 * test owns takes the place of systemd's, and the variables systemd gives its
 * main process (NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID=<pid of ecdysis run>)
 * are set as it sets them.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/internal/native.ts';
import { onLines } from '../../examples/lib/lines.ts';
import { cliPath } from '../helpers/cli.ts';
import { childrenOf, fixtureCommand, isAlive, waitUntil } from '../helpers/generations.ts';
import { Recorder } from '../helpers/native.ts';

/** The service manager's notify socket, as a test-owned datagram socket. */
function upstream(t: ExecutionContext) {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-upstream-'));
  const path = join(dir, 'notify.sock');
  const recorder = new Recorder();
  const reader = new (native().PacketSocket)(native().bindUnixDatagram(path), 'datagram', recorder);
  reader.startReading();
  t.teardown(() => {
    reader.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const messages = () => recorder.messages.map((m) => m.data.toString());
  const until = (what: string, check: (messages: string[]) => boolean) => recorder.until(() => check(messages()), what, 30_000);
  return { path, messages, until };
}

interface RunRecord {
  type: string;
  pid: number;
  gen?: number;
  [key: string]: unknown;
}

/**
 * `ecdysis run --notify -- node <fixture>`, started the way systemd starts a
 * main process: WATCHDOG_PID is its own pid (the shell execs it).
 */
function startRun(t: ExecutionContext, env: Record<string, string>, fixture = 'notify-helper-service.ts') {
  const run = spawn('sh', ['-c', 'WATCHDOG_PID=$$ exec "$@"', 'sh', process.execPath, cliPath, 'run', '--notify', '--', process.execPath, ...fixtureCommand(fixture)], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    for (const pid of [run.pid!, ...childrenOf([run.pid!])]) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  });
  const records: RunRecord[] = [];
  let stderr = '';
  onLines(run.stdout, (line) => {
    if (line.startsWith('{')) records.push(JSON.parse(line) as RunRecord);
  });
  run.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => run.once('exit', (code) => resolve(code)));
  /** The exit status, or 'still running' after `ms` (a bound for a failing test, not a synchronisation). */
  const exitWithin = (ms: number) => Promise.race([exited, new Promise<string>((resolve) => setTimeout(() => resolve('still running'), ms).unref())]);
  return { run, records, stderr: () => stderr, exitWithin };
}

test('ecdysis run --notify under WatchdogSec=: the service pings (WATCHDOG_PID, which names ecdysis run, is not passed on) and WATCHDOG=1 is relayed upstream, again and again', async (t) => {
  const manager = upstream(t);
  const { run, exitWithin, stderr } = startRun(t, { NOTIFY_SOCKET: manager.path, WATCHDOG_USEC: '200000' });
  await manager.until('READY=1 relayed', (m) => m.some((text) => text.split('\n').includes('READY=1')));
  await manager.until('3 watchdog pings relayed', (m) => m.filter((text) => text === 'WATCHDOG=1').length >= 3);
  process.kill(run.pid!, 'SIGTERM');
  t.is(await exitWithin(30_000), 0, stderr());
});

test('ecdysis run hears only the main process: a helper subprocess that sends MAINPID=<itself> is ignored, SIGTERM still reaches the service, which stops gracefully; the helper inherited no NOTIFY_SOCKET', async (t) => {
  const manager = upstream(t);
  const { run, records, exitWithin, stderr } = startRun(t, { NOTIFY_SOCKET: manager.path, WATCHDOG_USEC: '10000000', FIXTURE_HELPER: '1' });
  // Sent by generation 0 after the helper's message: ecdysis run has read that one by now.
  await manager.until('the service\'s message after the helper\'s', (m) => m.includes('STATUS=after the helper'));
  t.false(manager.messages().some((text) => text.includes('the helper claims to be main')), 'nothing of the helper\'s message was relayed');
  const helper = records.find((r) => r.type === 'helper')!;
  t.deepEqual(helper.inherited, [], 'the helper inherited none of NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID');
  const service = records.find((r) => r.type === 'ready' && r.gen === 0)!;
  t.deepEqual(service.managerVariables, [], 'create() took them out of process.env');
  t.regex(stderr(), new RegExp(`ignored a notification from pid ${helper.pid}: only the main process \\(pid ${service.pid}\\) is heard`));

  process.kill(run.pid!, 'SIGTERM');
  t.is(await exitWithin(30_000), 0, `ecdysis run exits with the service's status once it stopped; stderr: ${stderr()}`);
  t.like(records.find((r) => r.type === 'exiting'), { pid: service.pid, mode: 'stop' });
  t.like(records.find((r) => r.type === 'drained'), { pid: service.pid });
  t.false(records.some((r) => r.type === 'helper-sigterm'), 'the SIGTERM went to the service, not to the helper');
});

test('ecdysis run follows a take-back: the old generation, main before its successor died, names itself main again and gets the SIGTERM', async (t) => {
  const manager = upstream(t);
  // Generation 1 exits 300 ms after ready; generation 0 watches it for 60 s after its own drain (probation).
  const { run, records, exitWithin, stderr } = startRun(t, { NOTIFY_SOCKET: manager.path, FIXTURE_FAIL: '1:crash-after-ready', FIXTURE_PROBATION: '60000' }, 'line-service.ts');
  const until = async (what: string, match: (r: RunRecord) => boolean) => {
    await waitUntil(() => records.some(match), 30_000, what);
    return records.find(match)!;
  };
  const first = await until('generation 0 ready', (r) => r.type === 'ready' && r.gen === 0);
  process.kill(first.pid, 'SIGHUP');
  const second = await until('generation 1 ready', (r) => r.type === 'ready' && r.gen === 1);
  await manager.until('MAINPID of generation 1 relayed as READY', (m) => m.some((text) => text.includes(`pid ${second.pid}`)));
  await until('the take-back', (r) => r.event === 'successor-failed' && r.pid === first.pid);
  await manager.until('READY=1 of the take-back relayed', (m) => m.some((text) => text.includes('taken back')));
  process.kill(run.pid!, 'SIGTERM');
  t.is(await exitWithin(30_000), 0, stderr());
  t.like(records.filter((r) => r.event === 'exiting').at(-1), { pid: first.pid, mode: 'stop' });
});
