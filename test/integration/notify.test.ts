/**
 * What a service manager hears across upgrades, read from a notify socket the
 * test owns (no systemd here: test/integration/systemd.test.ts has the real one).
 */
import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/internal/native.ts';
import { startGenerations, upgradeBySignal, waitUntil, isAlive } from '../helpers/generations.ts';
import { Recorder } from '../helpers/native.ts';

function notifySocket(t: import('ava').ExecutionContext) {
  const path = join(mkdtempSync(join(tmpdir(), 'ecdysis-notify-')), 'notify.sock');
  const recorder = new Recorder();
  const reader = new (native().PacketSocket)(native().bindUnixDatagram(path), 'datagram', recorder);
  reader.startReading();
  t.teardown(() => reader.close());
  const fields = () => recorder.messages.map((m) => Object.fromEntries(m.data.toString().split('\n').map((line) => line.split(/=(.*)/s).slice(0, 2))) as Record<string, string>);
  const until = (what: string, match: (f: Record<string, string>) => boolean, since = 0) =>
    recorder.until(() => fields().slice(since).some(match), what, 30_000).then(() => fields().slice(since).find(match)!);
  return { path, fields, until };
}

test('ready, reload, hand-over of MAINPID, a failed upgrade, a take-back, a stop: each told to the service manager, watchdog pings from the main process', async (t) => {
  const notify = notifySocket(t);
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const g = startGenerations(t, 'line-service.ts', {
    NOTIFY_SOCKET: notify.path,
    WATCHDOG_USEC: '400000',
    FIXTURE_FAIL: '2.1:exit,2.2:crash-after-ready',
    FIXTURE_STATE_DIR: dir,
    FIXTURE_DRAIN_TIMEOUT: '7000',
  });
  const first = await g.ready(0);
  t.regex((await notify.until('READY', (f) => f.READY === '1')).STATUS!, /serving: generation 0, pid \d+/);
  await notify.until('a watchdog ping', (f) => f.WATCHDOG === '1');

  const { newPid } = await upgradeBySignal(g, 0);
  const reloading = await notify.until('RELOADING', (f) => f.RELOADING === '1');
  t.regex(reloading.MONOTONIC_USEC!, /^\d+$/);
  t.is(reloading.EXTEND_TIMEOUT_USEC, String((60_000 + 5_000) * 1000));
  const handover = await notify.until('MAINPID', (f) => f.MAINPID === String(newPid));
  t.is(handover.READY, '1');
  const before = notify.fields().length;
  // The next generation is main now and pings the watchdog itself (WATCHDOG_PID was not passed on).
  await notify.until('pings after the hand-over', (f) => f.WATCHDOG === '1', before);

  // A failed upgrade: READY=1 again, the code in STATUS.
  process.kill(newPid, 'SIGHUP');
  await g.event(1, 'child-failed');
  t.regex((await notify.until('READY after a failure', (f) => f.READY === '1' && /failed: ERR_ECDYSIS_CHILD_EXITED/.test(f.STATUS ?? ''))).STATUS!, /generation 1/);

  // A successor that dies after it took over (while an idle connection keeps this
  // generation draining): the old generation says it is main again.
  const { connect } = await import('node:net');
  const idle = connect(first.port as number, '127.0.0.1');
  t.teardown(() => idle.destroy());
  await new Promise((r) => idle.once('connect', r));
  idle.write('ping\n');
  await new Promise((r) => idle.once('data', r));
  process.kill(newPid, 'SIGHUP');
  await g.event(1, 'successor-failed');
  await notify.until('MAINPID back', (f) => f.MAINPID === String(newPid) && f.STATUS?.includes('taken back') === true);

  // A stop: STOPPING=1, and the drain's time announced.
  process.kill(newPid, 'SIGTERM');
  await notify.until('STOPPING', (f) => f.STOPPING === '1');
  t.is((await notify.until('EXTEND_TIMEOUT_USEC for the drain', (f) => f.EXTEND_TIMEOUT_USEC !== undefined && f.STATUS?.startsWith('draining') === true)).EXTEND_TIMEOUT_USEC, String((7_000 + 5_000) * 1000));
  await waitUntil(() => !isAlive(newPid) && !isAlive(first.pid), 30_000, 'all gone');
});
