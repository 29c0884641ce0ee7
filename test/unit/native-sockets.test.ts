/**
 * The addon's socket functions: creation with options, describe, socketOptions,
 * connectUnix, hasPendingConnection, pendingBytes, sendDatagram, notify and
 * peerCredentials. Real sockets on loopback and under a temporary directory.
 */
import test from 'ava';
import { lstatSync, readdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { native, type NativeSystemError } from '../../src/internal/native.ts';
import { abstractName, isNonBlocking, jsonLines, Recorder, runFixture, socketDir, throwsLike } from '../helpers/native.ts';

/** Opens an fd and closes it at teardown (unless the test closed it). */
function owned(t: { teardown(fn: () => void): void }, fd: number): number {
  t.teardown(() => {
    try {
      native().close(fd);
    } catch {
      // closed by the test
    }
  });
  return fd;
}

// IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW (bits 12 and 13 of CapEff).
const canTransparent = (BigInt(`0x${/^CapEff:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0'}`) & 0x3000n) !== 0n;

test('listenTcp sets every option it is given; socketOptions reads them back', (t) => {
  const fd = owned(
    t,
    native().listenTcp('127.0.0.1', 0, 16, {
      reuseAddr: true,
      reusePort: true,
      freebind: true,
      transparent: canTransparent,
      fastOpen: 32,
      deferAccept: 5,
      recvBufferSize: 100_000,
      sendBufferSize: 120_000,
    }),
  );
  t.like(native().describe(fd), { domain: 'inet', type: 'stream', listening: true, address: '127.0.0.1', cloexec: true });
  t.true(isNonBlocking(fd));
  const options = native().socketOptions(fd);
  t.like(options, { reuseAddr: true, reusePort: true, freebind: true, transparent: canTransparent, fastOpen: 32 });
  t.true(options.deferAccept! >= 5, `deferAccept read back as ${options.deferAccept}`);
  // The kernel doubles a requested size for its bookkeeping.
  t.is(options.recvBufferSize, 200_000);
  t.is(options.sendBufferSize, 240_000);
  t.is(options.ipv6Only, undefined);
});

test('listenTcp: missing options mean off, as before; the old three-flag form still works', (t) => {
  const fd = owned(t, native().listenTcp('127.0.0.1', 0, 16, { reuseAddr: false, reusePort: false, ipv6Only: false }));
  t.like(native().socketOptions(fd), { reuseAddr: false, reusePort: false, freebind: false, transparent: false, fastOpen: 0, deferAccept: 0 });
  const bare = owned(t, native().listenTcp('127.0.0.1', 0, 16, {}));
  t.like(native().socketOptions(bare), { reuseAddr: false, fastOpen: 0 });
  t.throws(() => native().listenTcp('127.0.0.1', 0, 16, { fastOpen: -1 }), {
    code: 'ERR_INVALID_ARG_TYPE',
    message: 'options.fastOpen must be a non-negative integer',
  });
  t.throws(() => native().listenTcp('127.0.0.1', 0, 16, { recvBufferSize: 1.5 }), { message: 'options.recvBufferSize must be a non-negative integer' });
});

test('listenTcp on IPv6: ipv6Only, freebind and transparent use their IPv6 options', (t) => {
  const only = owned(t, native().listenTcp('::1', 0, 16, { ipv6Only: true, freebind: true, transparent: canTransparent }));
  t.like(native().socketOptions(only), { ipv6Only: true, freebind: true, transparent: canTransparent });
  // The kernel sets IPV6_V6ONLY itself on a socket bound to a specific IPv6
  // address; a v4-mapped one shows whether the flag was off before bind.
  const dual = owned(t, native().listenTcp('::ffff:127.0.0.1', 0, 16, { ipv6Only: false }));
  t.like(native().describe(dual), { domain: 'inet6', address: '::ffff:127.0.0.1' });
  t.like(native().socketOptions(dual), { ipv6Only: false, freebind: false });
  throwsLike(t, () => native().listenTcp('::ffff:127.0.0.1', 0, 16, { ipv6Only: true }), { code: 'EINVAL', syscall: 'bind' });
});

test('a refused option throws "setsockopt EPERM IP_TRANSPARENT" (unprivileged child process)', async (t) => {
  const result = await runFixture('native-refused-option.ts');
  t.is(result.code, 0, result.stderr);
  const all = jsonLines(result.stdout);
  const lines = all.filter((line) => 'code' in line || 'unexpected' in line);
  t.is(lines.length, 3, result.stdout);
  for (const line of lines) {
    t.like(line, { code: 'EPERM', errno: -1, syscall: 'setsockopt' }, JSON.stringify(line));
    t.is(line['message'], `setsockopt EPERM ${line['option'] as string}`);
  }
  t.deepEqual(
    lines.map((line) => line['option']),
    ['IP_TRANSPARENT', 'IPV6_TRANSPARENT', 'IP_TRANSPARENT'],
  );
  t.is(lines[0]!['address'], '127.0.0.1:0');
  t.is(lines[1]!['address'], '[::1]:0');
  t.is(all.at(-1)!['fdsLeaked'], 0);
});

test('bindUdp: a bound datagram socket, described as such, in both families', (t) => {
  const v4 = owned(t, native().bindUdp('127.0.0.1', 0, {}));
  const d4 = native().describe(v4);
  t.like(d4, { socket: true, domain: 'inet', type: 'dgram', listening: false, address: '127.0.0.1', cloexec: true });
  t.true(d4.port! > 0);
  t.true(isNonBlocking(v4));
  const v6 = owned(t, native().bindUdp('::1', 0));
  t.like(native().describe(v6), { domain: 'inet6', type: 'dgram', listening: false, address: '::1' });
  const mapped = owned(t, native().bindUdp('::ffff:127.0.0.1', 0, { ipv6Only: false }));
  t.like(native().socketOptions(mapped), { ipv6Only: false });
  t.throws(() => native().bindUdp('localhost', 0), { code: 'ERR_INVALID_IP_ADDRESS' });
  t.throws(() => native().bindUdp('127.0.0.1', -1), { instanceOf: RangeError, code: 'ERR_SOCKET_BAD_PORT' });
});

test('bindUdp: SO_REUSEPORT lets two sockets bind one port; without it, EADDRINUSE', (t) => {
  const first = owned(t, native().bindUdp('127.0.0.1', 0, { reusePort: true }));
  const port = native().describe(first).port!;
  const second = owned(t, native().bindUdp('127.0.0.1', port, { reusePort: true }));
  t.is(native().describe(second).port, port);
  t.like(native().socketOptions(second), { reusePort: true });
  const error = t.throws(() => native().bindUdp('127.0.0.1', port, {})) as NativeSystemError;
  t.like(error, { code: 'EADDRINUSE', errno: -98, syscall: 'bind', message: `bind EADDRINUSE 127.0.0.1:${port}` });
});

test('bindUdp: buffer sizes, freebind and ipv6Only read back', (t) => {
  const fd = owned(t, native().bindUdp('::1', 0, { recvBufferSize: 65_536, sendBufferSize: 32_768, ipv6Only: true, freebind: true, reuseAddr: true }));
  t.like(native().socketOptions(fd), {
    recvBufferSize: 131_072,
    sendBufferSize: 65_536,
    ipv6Only: true,
    freebind: true,
    reuseAddr: true,
  });
});

test('listenUnix: stream by default, seqpacket on request; a wrong type is refused', (t) => {
  const dir = socketDir(t);
  const stream = owned(t, native().listenUnix(join(dir, 'stream.sock'), 16));
  t.like(native().describe(stream), { domain: 'unix', type: 'stream', listening: true, path: join(dir, 'stream.sock') });
  const seq = owned(t, native().listenUnix(join(dir, 'seq.sock'), 16, 'seqpacket'));
  t.like(native().describe(seq), { domain: 'unix', type: 'seqpacket', listening: true, path: join(dir, 'seq.sock'), cloexec: true });
  t.true(isNonBlocking(seq));
  const name = abstractName('seq');
  const abstract = owned(t, native().listenUnix(name, 16, 'seqpacket'));
  t.like(native().describe(abstract), { type: 'seqpacket', path: name });
  t.throws(() => native().listenUnix(join(dir, 'x.sock'), 16, 'dgram' as 'stream'), { code: 'ERR_INVALID_ARG_VALUE' });
});

test('listenUnix and bindUnixDatagram with a mode (and group): the file is created with them, the bound path is the one asked for; bad values are refused before a socket exists', (t) => {
  const dir = socketDir(t);
  const stream = join(dir, 'stream.sock');
  const fd = owned(t, native().listenUnix(stream, 16, 'stream', { mode: 0o606, gid: 65534 }));
  t.like(native().describe(fd), { listening: true, path: stream });
  t.like(lstatSync(stream), { mode: 0o140606, gid: 65534 });
  const dgram = join(dir, 'dgram.sock');
  owned(t, native().bindUnixDatagram(dgram, { mode: 0o777, recvBufferSize: 50_000 }));
  t.is(lstatSync(dgram).mode & 0o777, 0o777);
  // Abstract names have no file: the mode means nothing there.
  owned(t, native().listenUnix(abstractName('mode'), 16, 'seqpacket', { mode: 0o600 }));
  t.throws(() => native().listenUnix(join(dir, 'a.sock'), 16, 'stream', { mode: 0o1777 }), { code: 'ERR_INVALID_ARG_TYPE', message: 'options.mode must be an integer between 0 and 0o777' });
  t.throws(() => native().listenUnix(join(dir, 'b.sock'), 16, 'stream', { mode: 0o600, gid: -1 }), { message: 'options.gid must be a non-negative integer' });
  t.throws(() => native().bindUnixDatagram(join(dir, 'c.sock'), { gid: 0 }), { code: 'ERR_INVALID_ARG_VALUE', message: 'options.gid needs options.mode' });
  t.deepEqual(readdirSync(dir).sort(), ['dgram.sock', 'stream.sock']);
});

test('setSocketFileMode: changes the socket file with that inode only, never through a link', (t) => {
  const dir = socketDir(t);
  const path = join(dir, 's.sock');
  owned(t, native().listenUnix(path, 16, 'stream', { mode: 0o666 }));
  const inode = lstatSync(path).ino;
  t.true(native().setSocketFileMode(path, inode, 0o660, 65534));
  t.like(lstatSync(path), { mode: 0o140660, gid: 65534 });
  t.false(native().setSocketFileMode(path, inode, 0o660, 65534), 'nothing to change');
  throwsLike(t, () => native().setSocketFileMode(path, inode + 1, 0o600), { code: 'EEXIST', syscall: 'fstat', address: path });
  const victim = join(dir, 'victim');
  writeFileSync(victim, '', { mode: 0o644 });
  const link = join(dir, 'link.sock');
  symlinkSync(victim, link);
  renameSync(link, path);
  throwsLike(t, () => native().setSocketFileMode(path, inode, 0o600), { code: 'ENOTSOCK' });
  t.is(lstatSync(victim).mode & 0o777, 0o644);
  t.throws(() => native().setSocketFileMode(path, inode, 0o1000), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native().setSocketFileMode('\0abstract', inode, 0o600), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('bindUnixDatagram: path and abstract name, not listening, buffer sizes', (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'dgram.sock');
  const fd = owned(t, native().bindUnixDatagram(path, { recvBufferSize: 50_000, sendBufferSize: 60_000 }));
  t.like(native().describe(fd), { domain: 'unix', type: 'dgram', listening: false, path, cloexec: true });
  t.true(isNonBlocking(fd));
  t.like(native().socketOptions(fd), { recvBufferSize: 100_000, sendBufferSize: 120_000 });
  t.is(native().socketOptions(fd).reuseAddr, undefined);
  const name = abstractName('dgram');
  const abstract = owned(t, native().bindUnixDatagram(name));
  t.like(native().describe(abstract), { type: 'dgram', listening: false, path: name });
  throwsLike(t, () => native().bindUnixDatagram(path), { code: 'EADDRINUSE', syscall: 'bind', message: `bind EADDRINUSE ${path}` });
  t.throws(() => native().bindUnixDatagram(`/tmp/${'x'.repeat(200)}`), { code: 'ENAMETOOLONG' });
});

test('connectUnix: stream, seqpacket and dgram clients, non-blocking and close-on-exec, unbound', (t) => {
  const dir = socketDir(t);
  const streamPath = join(dir, 's.sock');
  const seqPath = join(dir, 'q.sock');
  const dgramPath = join(dir, 'd.sock');
  owned(t, native().listenUnix(streamPath, 16));
  owned(t, native().listenUnix(seqPath, 16, 'seqpacket'));
  owned(t, native().bindUnixDatagram(dgramPath));
  for (const [path, type] of [
    [streamPath, 'stream'],
    [seqPath, 'seqpacket'],
    [dgramPath, 'dgram'],
  ] as const) {
    const fd = owned(t, native().connectUnix(path, type));
    const description = native().describe(fd);
    t.like(description, { domain: 'unix', type, listening: false, cloexec: true });
    t.is(description.path, undefined, 'a client socket is unbound');
    t.true(isNonBlocking(fd));
  }
  t.like(native().describe(owned(t, native().connectUnix(streamPath))), { type: 'stream' });
  t.throws(() => native().connectUnix(streamPath, 'raw' as 'stream'), { code: 'ERR_INVALID_ARG_VALUE' });
});

test('connectUnix errors: ENOENT, ECONNREFUSED, EAGAIN on a full accept queue', (t) => {
  const dir = socketDir(t);
  const missing = join(dir, 'missing.sock');
  throwsLike(t, () => native().connectUnix(missing, 'stream'), { code: 'ENOENT', errno: -2, syscall: 'connect', message: `connect ENOENT ${missing}` });
  // A socket file nobody listens on any more.
  const stale = join(dir, 'stale.sock');
  native().close(native().listenUnix(stale, 16));
  throwsLike(t, () => native().connectUnix(stale, 'stream'), { code: 'ECONNREFUSED', syscall: 'connect' });
  t.throws(() => native().connectUnix(abstractName('nobody'), 'seqpacket'), { code: 'ECONNREFUSED', message: /^connect ECONNREFUSED @ecdysis-test-/ });
  // Backlog 1: the kernel queues backlog + 1 connections, then refuses to wait.
  const full = join(dir, 'full.sock');
  owned(t, native().listenUnix(full, 1, 'seqpacket'));
  let error: NativeSystemError | undefined;
  for (let i = 0; i < 10 && !error; i++) {
    try {
      owned(t, native().connectUnix(full, 'seqpacket'));
    } catch (err) {
      error = err as NativeSystemError;
    }
  }
  t.like(error, { code: 'EAGAIN', syscall: 'connect', address: full });
});

test('hasPendingConnection: a Unix listener and a TCP listener with a connection waiting', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'pending.sock');
  const unix = owned(t, native().listenUnix(path, 16, 'seqpacket'));
  t.false(native().hasPendingConnection(unix));
  owned(t, native().connectUnix(path, 'seqpacket'));
  t.true(native().hasPendingConnection(unix));

  const tcp = owned(t, native().listenTcp('127.0.0.1', 0, 16, {}));
  t.false(native().hasPendingConnection(tcp));
  const client = connect(native().describe(tcp).port!, '127.0.0.1');
  t.teardown(() => client.destroy());
  await new Promise((resolve) => client.once('connect', resolve));
  t.true(native().hasPendingConnection(tcp));
  throwsLike(t, () => native().hasPendingConnection(987_654), { code: 'EBADF', syscall: 'poll' });
});

test('sendDatagram and pendingBytes: Unix path, abstract name, connected peer', (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'recv.sock');
  const receiver = owned(t, native().bindUnixDatagram(path));
  const sender = owned(t, native().bindUnixDatagram(join(dir, 'send.sock')));
  t.is(native().pendingBytes(receiver), 0);
  t.is(native().sendDatagram(sender, Buffer.from('hello'), path), 5);
  t.is(native().sendDatagram(sender, Buffer.alloc(1000), path, 0), 1000);
  t.is(native().pendingBytes(receiver), 5, 'the size of the next datagram, not of all');

  const name = abstractName('recv');
  const abstract = owned(t, native().bindUnixDatagram(name));
  t.is(native().sendDatagram(sender, new Uint8Array([1, 2, 3]), name), 3);
  t.is(native().pendingBytes(abstract), 3);

  const client = owned(t, native().connectUnix(name, 'dgram'));
  t.is(native().sendDatagram(client, Buffer.from('to the peer')), 11);

  const missing = join(dir, 'missing.sock');
  throwsLike(t, () => native().sendDatagram(sender, Buffer.from('x'), missing), { code: 'ENOENT', syscall: 'sendto', message: `sendto ENOENT ${missing}` });
  t.throws(() => native().sendDatagram(sender, 'text' as unknown as Buffer, path), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('sendDatagram: a full Unix receiver queue throws EAGAIN', (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'full.sock');
  owned(t, native().bindUnixDatagram(path));
  const sender = owned(t, native().bindUnixDatagram(join(dir, 'sender.sock')));
  let error: NativeSystemError | undefined;
  for (let i = 0; i < 100_000 && !error; i++) {
    try {
      native().sendDatagram(sender, Buffer.alloc(100), path);
    } catch (err) {
      error = err as NativeSystemError;
    }
  }
  t.like(error, { code: 'EAGAIN', errno: -11, syscall: 'sendto', address: path });
});

test('sendDatagram and pendingBytes on UDP, both families; an IPv4 address reaches an IPv6 socket v4-mapped', (t) => {
  for (const host of ['127.0.0.1', '::1']) {
    const receiver = owned(t, native().bindUdp(host, 0));
    const sender = owned(t, native().bindUdp(host, 0));
    const port = native().describe(receiver).port!;
    t.is(native().sendDatagram(sender, Buffer.from('datagram'), host, port), 8);
    t.is(native().pendingBytes(receiver), 8);
    t.throws(() => native().sendDatagram(sender, Buffer.from('x'), 'not-an-ip', port), { code: 'ERR_INVALID_IP_ADDRESS' });
  }
  const dual = owned(t, native().bindUdp('::ffff:127.0.0.1', 0, { ipv6Only: false }));
  const v4 = owned(t, native().bindUdp('127.0.0.1', 0));
  const port = native().describe(v4).port!;
  t.is(native().sendDatagram(dual, Buffer.from('mapped'), '127.0.0.1', port), 6);
  t.is(native().pendingBytes(v4), 6);
});

test('notify: one datagram to a path or an @abstract name; errors are Node-shaped', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'notify.sock');
  const recorder = new Recorder();
  const socket = new (native().PacketSocket)(native().bindUnixDatagram(path), 'datagram', recorder);
  t.teardown(() => socket.close());
  socket.startReading();
  native().notify(path, 'READY=1\nSTATUS=serving');
  const name = abstractName('notify');
  const abstractRecorder = new Recorder();
  const abstract = new (native().PacketSocket)(native().bindUnixDatagram(name), 'datagram', abstractRecorder);
  t.teardown(() => abstract.close());
  abstract.startReading();
  native().notify(`@${name.slice(1)}`, 'WATCHDOG=1');
  await recorder.until(() => recorder.messages.length === 1);
  await abstractRecorder.until(() => abstractRecorder.messages.length === 1);
  t.is(recorder.messages[0]!.data.toString(), 'READY=1\nSTATUS=serving');
  t.is(recorder.messages[0]!.address, undefined, 'sent from a fresh, unbound socket');
  t.is(abstractRecorder.messages[0]!.data.toString(), 'WATCHDOG=1');
  const missing = join(dir, 'missing.sock');
  throwsLike(t, () => native().notify(missing, 'READY=1'), { code: 'ENOENT', syscall: 'sendmsg', message: `sendmsg ENOENT ${missing}` });
  t.throws(() => native().notify('@ecdysis-nobody-listens-here', 'READY=1'), { code: 'ECONNREFUSED', message: 'sendmsg ECONNREFUSED @ecdysis-nobody-listens-here' });
  t.throws(() => native().notify(path, 1 as unknown as string), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('peerCredentials: the pid, uid and gid at the other end', (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'cred.sock');
  const listener = owned(t, native().listenUnix(path, 16));
  const client = owned(t, native().connectUnix(path, 'stream'));
  t.deepEqual(native().peerCredentials(client), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  t.deepEqual(native().peerCredentials(listener), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  throwsLike(t, () => native().peerCredentials(987_654), { code: 'EBADF', syscall: 'getsockopt' });
});
