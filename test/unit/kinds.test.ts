/**
 * The socket kinds beyond TCP and Unix stream, in one process (generation 0):
 * UDP, Unix datagram and Unix seqpacket through their iterables, Observables,
 * replies and sends; options checked; paths unlinked on a full stop only.
 */
import test from 'ava';
import { createSocket } from 'node:dgram';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, take, toArray } from 'rxjs';
import { Ecdysis, SeqpacketSocket } from '../../src/index.ts';
import { native } from '../../src/internal/native.ts';
import { Recorder } from '../helpers/native.ts';
import { sameHost } from '../../src/wire/sockets.ts';

const quiet = { upgradeOn: [], stopOn: [] };
const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-kinds-'));

test('UDP: for await and messages() both get datagrams (each to one), replies reach the sender', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const udp = await ecdysis.listenUdp({ host: '127.0.0.1', port: 0, recvBufferSize: 1 << 20 });
  t.is(udp.kind, 'udp');
  t.true(udp.port > 0);
  await ecdysis.ready();
  const echoed = (async () => {
    for await (const msg of udp) {
      await msg.reply(Buffer.concat([Buffer.from('echo '), msg.data]));
      if (msg.data.toString() === 'last') break;
    }
  })();
  const client = createSocket('udp4');
  t.teardown(() => client.close());
  const answers: string[] = [];
  const got = new Promise<void>((resolve) =>
    client.on('message', (data) => {
      answers.push(data.toString());
      if (answers.length === 3) resolve();
    }),
  );
  for (const text of ['a', 'b', 'last']) client.send(text, udp.port, '127.0.0.1');
  await got;
  await echoed;
  t.deepEqual(answers.sort(), ['echo a', 'echo b', 'echo last']);

  const viaObservable = firstValueFrom(udp.messages().pipe(take(2), toArray()));
  client.send('x', udp.port, '127.0.0.1');
  client.send('y', udp.port, '127.0.0.1');
  const two = await viaObservable;
  t.deepEqual(two.map((m) => m.data.toString()).sort(), ['x', 'y']);
  t.like(two[0], { family: 'IPv4', address: '127.0.0.1', port: client.address().port });
});

test('UDP: send() works with nobody reading; unknown and bad options are coded errors', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const udp = await ecdysis.listenUdp({ host: '127.0.0.1', port: 0 });
  await ecdysis.ready();
  const receiver = createSocket('udp4');
  t.teardown(() => receiver.close());
  await new Promise<void>((resolve) => receiver.bind(0, '127.0.0.1', resolve));
  const received = new Promise<string>((resolve) => receiver.once('message', (data) => resolve(data.toString())));
  t.false(udp.accepting, 'nobody reads');
  await udp.send('unsolicited', receiver.address().port, '127.0.0.1');
  t.is(await received, 'unsolicited');
  await t.throwsAsync(ecdysis.listenUdp({ port: 0, backlog: 5 } as never), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.backlog" is not an option/ });
  await t.throwsAsync(ecdysis.listenUdp({ port: 0, recvBufferSize: -1 }), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /recvBufferSize/ });
  await t.throwsAsync(ecdysis.listenUdp({ host: '127.0.0.1', port: udp.port }), { code: 'EADDRINUSE', message: /^bind EADDRINUSE 127\.0\.0\.1:/ });
  // SO_REUSEPORT: two sockets of this generation on one port, both named.
  const a = await ecdysis.listenUdp({ host: '127.0.0.1', port: 0, reusePort: true, name: 'a' });
  const b = await ecdysis.listenUdp({ host: '127.0.0.1', port: a.port, reusePort: true, name: 'b' });
  t.is(a.port, b.port);
});

test('Unix datagram: datagrams with the sender path, replies, an unbound sender cannot be answered; path unlinked on a full stop', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'log.sock');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const log = await ecdysis.listenUnixDatagram(path, { mode: 0o600 });
  t.is(log.kind, 'unix-datagram');
  await ecdysis.ready();
  const clientPath = join(dir, 'client.sock');
  const recorder = new Recorder();
  const client = new (native().PacketSocket)(native().bindUnixDatagram(clientPath), 'datagram', recorder);
  t.teardown(() => client.close());
  client.startReading();
  const first = (async () => {
    for await (const msg of log) return msg;
    return undefined;
  })();
  client.send(Buffer.from('hello'), path);
  const msg = (await first)!;
  t.like(msg, { address: clientPath, port: 0, family: 'unix' });
  t.is(msg.data.toString(), 'hello');
  await msg.reply('hi');
  await recorder.until(() => recorder.messages.length === 1, 'the reply');
  t.is(recorder.messages[0]!.data.toString(), 'hi');

  const anonymous = new (native().PacketSocket)(native().connectUnix(path, 'dgram'), 'datagram', new Recorder());
  t.teardown(() => anonymous.close());
  const second = firstValueFrom(log.messages());
  anonymous.send(Buffer.from('who am I'));
  const unbound = await second;
  t.is(unbound.address, '');
  await t.throwsAsync(unbound.reply('nobody'), { code: 'ERR_ECDYSIS_NO_ADDRESS' });

  ecdysis.stop();
  await ecdysis.exit;
  t.false(existsSync(path), 'a full stop unlinks the path');
});

test('Unix seqpacket: connections keep message boundaries both ways; backpressure through send(); the peer sees the end', async (t) => {
  const dir = tempDir();
  const path = join(dir, 'seq.sock');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const seq = await ecdysis.listenUnixSeqpacket(path);
  t.is(seq.kind, 'unix-seqpacket');
  await ecdysis.ready();
  const served = (async () => {
    for await (const conn of seq) {
      t.true(conn instanceof SeqpacketSocket);
      t.is(conn.peerCredentials().pid, process.pid);
      for await (const message of conn) await conn.send(Buffer.concat([Buffer.from('>'), message]));
      conn.end();
      return;
    }
  })();
  const recorder = new Recorder();
  const client = new (native().PacketSocket)(native().connectUnix(path, 'seqpacket'), 'connected', recorder);
  t.teardown(() => client.close());
  client.startReading();
  const sizes = [1, 10, 1000, 100_000, 3];
  for (const size of sizes) client.send(Buffer.alloc(size, 'x'));
  await recorder.until(() => recorder.messages.length === sizes.length, 'the echoes');
  t.deepEqual(recorder.messages.map((m) => m.data.length), sizes.map((n) => n + 1));
  client.shutdown();
  await recorder.until(() => recorder.ended === 1, 'the end');
  await served;
  t.is(seq.connectionCount, 0);
  await t.throwsAsync(ecdysis.listenUnixSeqpacket(join(dir, 'x.sock'), { allowHalfOpen: true } as never), { code: 'ERR_ECDYSIS_INVALID_OPTION' });
});

test('a stale socket file of each Unix kind is replaced; a live one is EADDRINUSE', async (t) => {
  const dir = tempDir();
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const stale = join(dir, 'stale.sock');
  closeAndLeave(native().bindUnixDatagram(stale));
  const dgram = await ecdysis.listenUnixDatagram(stale);
  t.is(dgram.path, stale);
  const staleSeq = join(dir, 'stale-seq.sock');
  closeAndLeave(native().listenUnix(staleSeq, 8, 'seqpacket'));
  await ecdysis.listenUnixSeqpacket(staleSeq);
  const live = join(dir, 'live.sock');
  const fd = native().listenUnix(live, 8, 'seqpacket');
  t.teardown(() => native().close(fd));
  await t.throwsAsync(ecdysis.listenUnixSeqpacket(live), { code: 'EADDRINUSE' });
});

function closeAndLeave(fd: number): void {
  // Closing a bound Unix socket leaves its file behind: a stale socket file.
  native().close(fd);
}

test('an inherited socket matches the address asked for in any spelling of the same host, and no other', (t) => {
  t.true(sameHost('127.0.0.1', '127.0.0.1'));
  t.false(sameHost('127.0.0.1', '127.0.0.2'));
  t.true(sameHost('::1', '0:0:0:0:0:0:0:1'));
  t.true(sameHost('fe80::1', 'FE80:0::1%eth0'));
  t.false(sameHost('::1', '::2'));
  t.true(sameHost('::', '0.0.0.0'));
  t.true(sameHost('0.0.0.0', '::'));
  t.false(sameHost('::', '127.0.0.1'));
  t.true(sameHost('::ffff:127.0.0.1', '::ffff:7f00:1'));
  t.false(sameHost('::1', 'localhost'));
  t.false(sameHost('::1', ':::1')); // not an address: compared as spelled, never thrown
});
