/**
 * UDP, Unix datagram and Unix seqpacket services upgraded for real, with
 * clients that never retry: every request answered exactly once, boundaries
 * kept, the same kernel socket in every generation, fds flat.
 */
import test from 'ava';
import { createSocket } from 'node:dgram';
import { lstatSync, mkdtempSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, type PacketSocket } from '../../src/internal/native.ts';
import { isAlive, socketInodes, startGenerations, udpInode, unixInode, upgradeBySignal, upgrades, waitUntil } from '../helpers/generations.ts';
import { Recorder } from '../helpers/native.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-kinds-'));

test('UDP: requests at a steady rate across 20 upgrades and a new generation that crashes: each answered exactly once, same socket throughout', async (t) => {
  const dir = tempDir();
  const g = startGenerations(t, 'kinds-service.ts', { FIXTURE_UDP: '1', FIXTURE_FAIL: '7.1:exit', FIXTURE_STATE_DIR: dir });
  const first = await g.ready(0);
  const port = first.udpPort as number;
  const inode = udpInode(port);
  t.truthy(inode);
  const client = createSocket({ type: 'udp4', recvBufferSize: 4 * 1024 * 1024 });
  t.teardown(() => client.close());
  const answers = new Map<number, number>();
  const generations = new Set<number>();
  client.on('message', (data) => {
    const [id, gen] = data.toString().split(' ').map(Number);
    answers.set(id!, (answers.get(id!) ?? 0) + 1);
    generations.add(gen!);
  });
  let sent = 0;
  const sender = setInterval(() => client.send(String(sent++), port, '127.0.0.1'), 2);
  const pids = await upgrades(g, 20);
  clearInterval(sender);
  await waitUntil(() => answers.size === sent, 30_000, `all ${sent} requests answered (${answers.size} so far)`);
  const duplicated = [...answers.values()].filter((n) => n > 1).length;
  t.log(`${sent} requests, ${answers.size} answered, ${duplicated} more than once, generations ${[...generations].sort((a, b) => a - b).join(',')}`);
  t.is(duplicated, 0);
  t.true(generations.size >= 15, 'answers came from many generations');
  t.is(udpInode(port), inode, 'the same kernel socket');
  t.true(socketInodes(pids.at(-1)!).includes(inode!));
  t.true(g.records.some((r) => r.event === 'child-failed' && r.code === 'ERR_ECDYSIS_CHILD_EXITED'), 'one generation crashed before ready');
  // fds flat: the same count in the 2nd and the 20th generation once their parent is gone.
  const fds = (gen: number) => Object.keys(g.records.find((r) => r.type === 'fds' && r.gen === gen)!.fds as object).length;
  t.is(fds(20), fds(2));
});

test('Unix datagram: 10 upgrades, each request answered exactly once to the sender path, same socket throughout', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'svc.sock');
  const g = startGenerations(t, 'kinds-service.ts', { FIXTURE_DGRAM: path });
  await g.ready(0);
  const inode = unixInode(path);
  t.truthy(inode);
  const recorder = new Recorder();
  const client: PacketSocket = new (native().PacketSocket)(native().bindUnixDatagram(join(dir, 'client.sock')), 'datagram', recorder);
  t.teardown(() => client.close());
  client.startReading();
  let sent = 0;
  const sender = setInterval(() => client.send(Buffer.from(String(sent++)), path), 3);
  await upgrades(g, 10);
  clearInterval(sender);
  await recorder.until(() => recorder.messages.length >= sent, `all ${sent} answered`, 30_000);
  const ids = recorder.messages.map((m) => Number(m.data.toString().split(' ')[0]));
  t.is(new Set(ids).size, sent, 'each exactly once');
  t.is(ids.length, sent);
  t.is(unixInode(path), inode);
});

test('Unix seqpacket: one message per connection across 20 upgrades with boundaries intact; a long-lived connection works until the old generation ends it', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'seq.sock');
  const g = startGenerations(t, 'kinds-service.ts', { FIXTURE_SEQ: path, FIXTURE_DRAIN_TIMEOUT: '1500' });
  const first = await g.ready(0);
  const inode = unixInode(path);

  // A long-lived connection to generation 0: a message every 20 ms.
  const held = new Recorder();
  const long = new (native().PacketSocket)(native().connectUnix(path, 'seqpacket'), 'connected', held);
  t.teardown(() => long.close());
  long.startReading();
  let heldSent = 0;
  let heldRefused: string | undefined;
  const heldSender = setInterval(() => {
    if (held.ended > 0 || heldRefused) return;
    try {
      long.send(Buffer.from(`held ${heldSent}`));
      heldSent++;
    } catch (err) {
      // The old generation ended the connection and the end has not been read yet.
      heldRefused = (err as NodeJS.ErrnoException).code;
    }
  }, 20);

  let running = true;
  const stats = { ok: 0, failed: [] as string[] };
  const oneAtATime = (async () => {
    for (let i = 0; running; i++) {
      const size = [1, 100, 9000, 70_000][i % 4]!;
      const recorder = new Recorder();
      let socket: PacketSocket | undefined;
      try {
        socket = new (native().PacketSocket)(native().connectUnix(path, 'seqpacket'), 'connected', recorder);
        socket.startReading();
        socket.send(Buffer.alloc(size, 'q'));
        await recorder.until(() => recorder.messages.length === 1 || recorder.ended > 0 || recorder.errors.length > 0, 'an answer', 15_000);
        const reply = recorder.messages[0]?.data;
        const prefix = /^(\d+) (\d+) /.exec(reply?.toString('latin1', 0, 40) ?? '');
        if (reply && prefix && reply.length === prefix[0].length + size) stats.ok++;
        else stats.failed.push(`size ${size}: ${reply ? `reply of ${reply.length} bytes` : recorder.errors[0]?.code ?? 'closed'}`);
      } catch (err) {
        stats.failed.push((err as Error).message);
      } finally {
        socket?.close();
      }
    }
  })();
  await upgrades(g, 20);
  running = false;
  await oneAtATime;
  clearInterval(heldSender);
  t.log(`${stats.ok} connections answered; held connection: ${held.messages.length} answers to ${heldSent} messages, then ${held.ended ? 'ended' : 'open'}`);
  t.deepEqual(stats.failed, []);
  t.true(stats.ok >= 20);
  // The long-lived connection was served by generation 0 through its drain, then ended by it.
  const heldGenerations = new Set(held.messages.map((m) => m.data.toString().split(' ')[0]));
  t.deepEqual([...heldGenerations], ['0']);
  t.true(held.messages.length > 20);
  t.is(held.ended + held.errors.length > 0 || heldRefused === 'EPIPE', true, 'the old generation ended it at its drain deadline');
  t.true(heldRefused === undefined || heldRefused === 'EPIPE', `a send on the held connection failed with ${heldRefused}`);
  t.true(isAlive(first.pid) === false);
  t.is(unixInode(path), inode);
});

test('MODE-NOT-REAPPLIED: a release that asks another mode gets it on the inherited socket files (listeners and control socket) at the upgrade, the same files; one replaced by a symlink is left alone, with a warning', async (t) => {
  const dir = tempDir();
  const modeFile = join(dir, 'mode');
  const controlModeFile = join(dir, 'control-mode');
  writeFileSync(modeFile, '666');
  writeFileSync(controlModeFile, '666');
  const paths = { dgram: join(dir, 'dgram.sock'), seq: join(dir, 'seq.sock'), control: join(dir, 'control.sock') };
  const g = startGenerations(t, 'kinds-service.ts', {
    FIXTURE_DGRAM: paths.dgram,
    FIXTURE_SEQ: paths.seq,
    FIXTURE_CONTROL: paths.control,
    FIXTURE_UNIX_MODE_FILE: modeFile,
    FIXTURE_CONTROL_MODE_FILE: controlModeFile,
  });
  await g.ready(0);
  const modes = () => Object.values(paths).map((path) => (lstatSync(path).mode & 0o777).toString(8));
  const inodes = Object.values(paths).map((path) => lstatSync(path).ino);
  t.deepEqual(modes(), ['666', '666', '666']);

  // Release 1 asks 0600 for all three.
  writeFileSync(modeFile, '600');
  writeFileSync(controlModeFile, '600');
  await upgradeBySignal(g, 0);
  t.deepEqual(modes(), ['600', '600', '600']);
  t.deepEqual(Object.values(paths).map((path) => lstatSync(path).ino), inodes, 'the same files');

  // Someone put a symlink to another file in place of one of them; release 2 asks 0640.
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'keep\n', { mode: 0o644 });
  symlinkSync(victim, join(dir, 'swap'));
  renameSync(join(dir, 'swap'), paths.seq);
  writeFileSync(modeFile, '640');
  writeFileSync(controlModeFile, '640');
  await upgradeBySignal(g, 1);
  t.is((lstatSync(paths.dgram).mode & 0o777).toString(8), '640');
  t.is((lstatSync(paths.control).mode & 0o777).toString(8), '640');
  t.is(lstatSync(victim).mode & 0o777, 0o644, 'the file the symlink points to is untouched');
  t.is(readFileSync(victim, 'utf8'), 'keep\n');
  const warning = await g.waitFor((r) => r.type === 'warning' && r.gen === 2, 10_000, 'the warning');
  t.is(warning.code, 'ECDYSIS_SOCKET_MODE_NOT_APPLIED');
  t.regex(warning.message as string, /seq\.sock keeps its mode and group; mode 0640 cannot be applied: fstat ENOTSOCK/);
});
