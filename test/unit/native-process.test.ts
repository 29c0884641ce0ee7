/**
 * The addon's process bindings for the CLI: signalling through a pidfd, and the
 * credentials of each sender on a Unix datagram socket bound with passCredentials
 * (`ecdysis run`'s notify socket).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../../src/internal/native.ts';
import { compiledRoot } from '../helpers/generations.ts';
import { runCommand } from '../helpers/run.ts';
import { openFds, Recorder, socketDir, throwsLike } from '../helpers/native.ts';

interface Sent {
  data: string;
  sender: { pid: number; uid: number; gid: number } | undefined;
}

test('pidfd: opened for a process, signal 0 checks it, a signal reaches it; once it is gone and reaped, ESRCH (whoever has its pid now); arguments validated', async (t) => {
  const sleep = spawn('sleep', ['600'], { stdio: 'ignore' });
  t.teardown(() => sleep.kill('SIGKILL'));
  const pidfd = native().pidfdOpen(sleep.pid!);
  t.teardown(() => native().close(pidfd));
  t.true(native().describe(pidfd).cloexec);
  native().pidfdSendSignal(pidfd, 0);
  const exited = new Promise<NodeJS.Signals | null>((resolve) => sleep.once('exit', (_code, signal) => resolve(signal)));
  native().pidfdSendSignal(pidfd, 15);
  t.is(await exited, 'SIGTERM');
  throwsLike(t, () => native().pidfdSendSignal(pidfd, 0), { code: 'ESRCH', syscall: 'pidfd_send_signal' });
  throwsLike(t, () => native().pidfdOpen(sleep.pid!), { code: 'ESRCH', syscall: 'pidfd_open' });
  for (const bad of [0, -1, 1.5, Number.NaN]) t.throws(() => native().pidfdOpen(bad), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native().pidfdSendSignal(pidfd, -1), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native().pidfdSendSignal(pidfd, 1000), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('passCredentials: each datagram comes with its sender\'s pid, uid and gid (this process, and another uid through setpriv); fds a sender passes are never received', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'notify.sock');
  const received: Sent[] = [];
  const recorder = new Recorder();
  const reader = new (native().PacketSocket)(native().bindUnixDatagram(path, { passCredentials: true }), 'datagram', {
    ...recorder,
    onMessage: (data, address, port, fds, sender) => {
      t.is(fds, undefined);
      received.push({ data: data.toString(), sender });
      recorder.onMessage(data, address, port);
    },
  });
  t.teardown(() => reader.close());
  reader.startReading();
  // So that another uid may send to it.
  chmodSync(dir, 0o755);
  chmodSync(path, 0o777);

  native().notify(path, 'READY=1');
  await recorder.until(() => received.length === 1, 'our own message');
  t.deepEqual(received[0], { data: 'READY=1', sender: { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() } });

  const script = `import { native } from '${compiledRoot}src/internal/native.js'; native().notify(process.argv[1], 'MAINPID=' + process.pid); console.log(process.pid);`;
  const other = await runCommand('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '--input-type=module', '-e', script, path], { timeoutMs: 30_000 });
  t.is(other.code, 0, other.stderr);
  await recorder.until(() => received.length === 2, 'the other uid\'s message');
  t.deepEqual(received[1], { data: `MAINPID=${other.stdout.trim()}`, sender: { pid: Number(other.stdout.trim()), uid: 65534, gid: 65534 } });

  const before = openFds().size;
  native().notify(path, 'FDSTORE=1', [0, 1, 2]);
  await recorder.until(() => received.length === 3, 'a message with fds');
  t.is(received[2]!.data, 'FDSTORE=1');
  t.is(openFds().size, before, 'no fd arrived with it');
});
