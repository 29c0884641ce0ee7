/**
 * The systemd pieces that need no systemd: the notification format, the
 * watchdog rules, and the LISTEN_* parser (sd_listen_fds rules) on garbage.
 * Real systemd runs in test/integration/systemd.test.ts.
 */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/internal/native.ts';
import { readListenFds, storedName } from '../../src/systemd/activation.ts';
import { ServiceManager, formatNotification, watchdogUsec } from '../../src/systemd/notify.ts';
import { Recorder } from '../helpers/native.ts';
import { compiledRoot } from '../helpers/generations.ts';

test('notifications: KEY=VALUE lines; a newline in a value cannot smuggle in a field; bad keys throw', (t) => {
  t.is(formatNotification({ READY: 1, STATUS: 'serving' }), 'READY=1\nSTATUS=serving');
  t.is(formatNotification({ STATUS: 'x\nMAINPID=1' }), 'STATUS=x MAINPID=1');
  t.throws(() => formatNotification({ 'READY=1\nMAINPID': 1 }), { instanceOf: TypeError });
});

test('a ServiceManager sends to NOTIFY_SOCKET (path or @abstract); a failure is reported once per run of failures, never thrown', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-notify-'));
  for (const [socketName, bindName] of [
    [join(dir, 'notify.sock'), join(dir, 'notify.sock')],
    [`@ecdysis-test-${process.pid}`, `\0ecdysis-test-${process.pid}`],
  ] as const) {
    const recorder = new Recorder();
    const reader = new (native().PacketSocket)(native().bindUnixDatagram(bindName), 'datagram', recorder);
    reader.startReading();
    const failures: string[] = [];
    const manager = ServiceManager.fromEnvironment('auto', { NOTIFY_SOCKET: socketName }, (err) => failures.push(err.message))!;
    t.true(manager.notify({ READY: 1, STATUS: 'ok' }));
    await recorder.until(() => recorder.messages.length === 1, 'the notification');
    t.is(recorder.messages[0]!.data.toString(), 'READY=1\nSTATUS=ok');
    reader.close();
    t.deepEqual(failures, []);
  }
  const failures: string[] = [];
  const gone = ServiceManager.fromEnvironment('auto', { NOTIFY_SOCKET: join(dir, 'nobody.sock') }, (err) => failures.push(err.message))!;
  t.false(gone.notify({ READY: 1 }));
  t.false(gone.notify({ READY: 1 }));
  t.is(failures.length, 1, 'one report for a run of failures');
  t.regex(failures[0]!, /ENOENT/);
  t.is(ServiceManager.fromEnvironment(false, { NOTIFY_SOCKET: join(dir, 'x') }, () => {}), undefined);
  t.is(ServiceManager.fromEnvironment('auto', {}, () => {}), undefined);
  t.is(ServiceManager.fromEnvironment('auto', { NOTIFY_SOCKET: 'relative' }, () => {}), undefined);
});

test('watchdog: WATCHDOG_USEC applies when WATCHDOG_PID is ours or absent', (t) => {
  t.is(watchdogUsec({ WATCHDOG_USEC: '2000000' }), 2_000_000);
  t.is(watchdogUsec({ WATCHDOG_USEC: '2000000', WATCHDOG_PID: String(process.pid) }), 2_000_000);
  t.is(watchdogUsec({ WATCHDOG_USEC: '2000000', WATCHDOG_PID: '1' }), undefined);
  for (const garbage of ['', '0', '-5', '1e6', 'x', '9'.repeat(30)]) t.is(watchdogUsec({ WATCHDOG_USEC: garbage }), undefined, garbage);
});

test('the service manager\'s variables are taken out of the environment they were read from (no subprocess inherits them); watchdogUsec still sees them; systemd: false leaves them', (t) => {
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/x/notify', WATCHDOG_USEC: '3000000', WATCHDOG_PID: String(process.pid), OTHER: 'kept' };
  t.is(ServiceManager.fromEnvironment('auto', env, () => {})!.socket, '/run/x/notify');
  t.deepEqual(env, { OTHER: 'kept' });
  t.is(watchdogUsec(env), 3_000_000);
  const off: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/x/notify', WATCHDOG_USEC: '3000000' };
  t.is(ServiceManager.fromEnvironment(false, off, () => {}), undefined);
  t.deepEqual(off, { NOTIFY_SOCKET: '/run/x/notify', WATCHDOG_USEC: '3000000' });
});

test('LISTEN_*: garbage values and count or name mismatches are coded errors; another pid\'s variables are ignored; all are removed', (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ LISTEN_PID: 'me', LISTEN_FDS: '1' }, /LISTEN_PID="me" is not a pid/],
    [{ LISTEN_PID: '', LISTEN_FDS: '1' }, /LISTEN_PID="" is not a pid/],
    [{ LISTEN_PID: String(process.pid), LISTEN_FDS: 'two' }, /LISTEN_FDS="two" is not a count/],
    [{ LISTEN_PID: String(process.pid), LISTEN_FDS: '2', LISTEN_FDNAMES: 'a' }, /names 1 sockets, LISTEN_FDS says 2/],
  ];
  for (const [env, message] of cases) {
    const copy: NodeJS.ProcessEnv = { ...env, OTHER: 'kept' };
    t.throws(() => readListenFds(copy), { code: 'ERR_ECDYSIS_SYSTEMD', message });
    t.deepEqual(copy, { OTHER: 'kept' }, 'removed even when wrong');
  }
  const foreign: NodeJS.ProcessEnv = { LISTEN_PID: '1', LISTEN_FDS: '3', LISTEN_FDNAMES: 'a:b:c' };
  t.deepEqual(readListenFds(foreign), []);
  t.deepEqual(foreign, {});
  t.deepEqual(readListenFds({}), []);
});

test('LISTEN_FDS without LISTEN_PID is not for this process (sd_listen_fds(3)): ignored with a debug line, the passed fd left alone, the variables removed', (t) => {
  // A wrapper that cleared only LISTEN_PID so that its child would not take its
  // sockets: the child starts, and does not touch fd 3.
  const tcp = native().listenTcp('127.0.0.1', 0, 8, { reuseAddr: true });
  t.teardown(() => native().close(tcp));
  const script = `
    import { readListenFds } from '${compiledRoot}src/systemd/activation.js';
    import { native } from '${compiledRoot}src/internal/native.js';
    process.env.LISTEN_FDS = '1';
    process.env.LISTEN_FDNAMES = 'web';
    const sockets = readListenFds(process.env);
    console.log(JSON.stringify({ sockets, left: Object.keys(process.env).filter((k) => k.startsWith('LISTEN_')), fd3: native().describe(3) }));`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe', tcp], encoding: 'utf8', env: { ...process.env, NODE_DEBUG: 'ecdysis' } });
  t.is(run.status, 0, run.stderr);
  const result = JSON.parse(run.stdout) as { sockets: unknown[]; left: string[]; fd3: { listening: boolean } };
  t.deepEqual(result.sockets, []);
  t.deepEqual(result.left, []);
  t.like(result.fd3, { listening: true }, 'still open: nothing took or closed it');
  t.regex(run.stderr, /ECDYSIS \d+: LISTEN_FDS=1 without LISTEN_PID: not for this process, ignored/);
});

test('LISTEN_*: the sockets at fd 3 on are adopted by kind, name and address; a connection is left alone', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-listen-'));
  const tcp = native().listenTcp('127.0.0.1', 0, 8, { reuseAddr: true });
  const unix = native().listenUnix(join(dir, 'admin.sock'), 8);
  const udp = native().bindUdp('127.0.0.1', 0);
  const stream = native().connectUnix(join(dir, 'admin.sock'), 'stream');
  t.teardown(() => [tcp, unix, udp, stream].forEach((fd) => native().close(fd)));
  const port = native().describe(tcp).port!;
  const udpPort = native().describe(udp).port!;
  const script = `
    import { readListenFds } from '${compiledRoot}src/systemd/activation.js';
    process.env.LISTEN_PID = String(process.pid);
    process.env.LISTEN_FDS = '4';
    process.env.LISTEN_FDNAMES = 'web:admin:unknown:connection';
    console.log(JSON.stringify(readListenFds(process.env)));`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe', tcp, unix, udp, stream], encoding: 'utf8' });
  t.is(run.status, 0, run.stderr);
  const sockets = JSON.parse(run.stdout) as { fd: number; key: string; kind: string; address: object }[];
  t.deepEqual(sockets, [
    { fd: 3, key: 'systemd:web', name: 'web', kind: 'tcp', address: { host: '127.0.0.1', port }, stored: false },
    { fd: 4, key: 'systemd:admin', name: 'admin', kind: 'unix', address: { path: join(dir, 'admin.sock') }, stored: false },
    { fd: 5, key: 'systemd:fd5', kind: 'udp', address: { host: '127.0.0.1', port: udpPort }, stored: false },
  ]);
});

test('LISTEN_*: a name shared by several sockets (FileDescriptorName= names all of a unit\'s): by address, else in order; one too many is a conflict', (t) => {
  const v4 = native().listenTcp('127.0.0.1', 0, 8, { reuseAddr: true });
  const v6 = native().listenTcp('::1', 0, 8, { reuseAddr: true });
  t.teardown(() => [v4, v6].forEach((fd) => native().close(fd)));
  const script = `
    import { Ecdysis } from '${compiledRoot}src/index.js';
    process.env.LISTEN_PID = String(process.pid);
    process.env.LISTEN_FDS = '2';
    process.env.LISTEN_FDNAMES = 'web:web';
    const ecdysis = await Ecdysis.create({ systemd: false });
    const first = await ecdysis.listenTcp({ systemd: 'web', host: '::1' });
    const second = await ecdysis.listenTcp({ systemd: 'web' });
    const third = await ecdysis.listenTcp({ systemd: 'web' }).catch((err) => err.code);
    console.log(JSON.stringify({ first: [first.key, first.host], second: [second.key, second.host], third }));
    ecdysis.stop();`;
  const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe', v4, v6], encoding: 'utf8' });
  t.is(run.status, 0, run.stderr);
  t.deepEqual(JSON.parse(run.stdout), {
    first: ['systemd:web:2', '::1'],
    second: ['systemd:web', '127.0.0.1'],
    third: 'ERR_ECDYSIS_LISTENER_CONFLICT',
  });
});

test('fd store names: the key, encoded without ":"', (t) => {
  t.is(storedName('tcp:[::]:8080'), 'ecdysis.tcp%3A%5B%3A%3A%5D%3A8080');
  t.false(storedName('unix:/run/app/admin.sock')!.includes(':'));
  t.is(storedName(`unix:/${'x'.repeat(300)}`), undefined);
});
