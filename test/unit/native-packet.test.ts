/**
 * PacketSocket and SeqpacketServer: the addon's poll-driven datagram and
 * seqpacket sockets, over real Unix and loopback UDP sockets.
 */
import test, { type ExecutionContext } from 'ava';
import { AsyncLocalStorage } from 'node:async_hooks';
import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { native, type PacketSocket } from '../../src/internal/native.ts';
import { abstractName, loopTurns, openFds, Recorder, socketDir, throwsLike } from '../helpers/native.ts';

function packetSocket(t: ExecutionContext, fd: number, mode: 'datagram' | 'connected', recorder = new Recorder()) {
  const socket = new (native().PacketSocket)(fd, mode, recorder);
  t.teardown(() => socket.close());
  return { socket, recorder };
}

/** A bound Unix datagram socket driven by a PacketSocket, already reading. */
function unixDatagram(t: ExecutionContext, path: string, reading = true) {
  const pair = packetSocket(t, native().bindUnixDatagram(path), 'datagram');
  if (reading) pair.socket.startReading();
  return pair;
}

/** Both ends of a seqpacket connection, through a SeqpacketServer; neither is reading yet. */
async function seqpacketPair(t: ExecutionContext) {
  const path = join(socketDir(t), 'seq.sock');
  const accepted = new Recorder();
  const server = new (native().SeqpacketServer)(native().listenUnix(path, 16, 'seqpacket'), accepted);
  t.teardown(() => server.close());
  server.start();
  const clientFd = native().connectUnix(path, 'seqpacket');
  await accepted.until(() => accepted.connections.length === 1, 'the connection');
  server.close();
  const serverSide = packetSocket(t, accepted.connections[0]!, 'connected');
  const clientSide = packetSocket(t, clientFd, 'connected');
  return { server: serverSide.socket, serverRecorder: serverSide.recorder, client: clientSide.socket, clientRecorder: clientSide.recorder };
}

/** A message whose bytes say which one it is. */
function numbered(index: number, size: number): Buffer {
  const data = Buffer.alloc(size, index % 251);
  if (size >= 4) data.writeUInt32BE(index, 0);
  return data;
}

/** Sends until send() returns false (the queue reached the high-water mark); returns how many were sent or queued. */
function fillUntilFull(socket: PacketSocket, message: Buffer, address?: string): number {
  for (let count = 1; count <= 100_000; count++) {
    if (!socket.send(message, address)) return count;
  }
  throw new Error('send() never returned false');
}

test('Unix datagrams between two paths: each message with its sender, replies go back', async (t) => {
  const dir = socketDir(t);
  const serverPath = join(dir, 'server.sock');
  const clientPath = join(dir, 'client.sock');
  const server = unixDatagram(t, serverPath);
  const client = unixDatagram(t, clientPath);
  t.true(client.socket.send(Buffer.from('question'), serverPath));
  await server.recorder.until(() => server.recorder.messages.length === 1);
  const question = server.recorder.messages[0]!;
  t.deepEqual(question, { data: Buffer.from('question'), address: clientPath, port: undefined });
  t.true(server.socket.send(Buffer.from('answer'), question.address));
  await client.recorder.until(() => client.recorder.messages.length === 1);
  t.deepEqual(client.recorder.messages[0], { data: Buffer.from('answer'), address: serverPath, port: undefined });
  t.deepEqual(server.recorder.errors, []);
});

test('Unix datagrams between abstract names: the address keeps its leading NUL', async (t) => {
  const serverName = abstractName('server');
  const clientName = abstractName('client');
  const server = unixDatagram(t, serverName);
  const client = unixDatagram(t, clientName);
  client.socket.send(Buffer.from('hello'), serverName);
  await server.recorder.until(() => server.recorder.messages.length === 1);
  t.is(server.recorder.messages[0]!.address, clientName);
  t.true(server.recorder.messages[0]!.address!.startsWith('\0'));
  server.socket.send(Buffer.from('hi'), clientName);
  await client.recorder.until(() => client.recorder.messages.length === 1);
  t.is(client.recorder.messages[0]!.address, serverName);
});

test('an unbound Unix sender has no address; empty datagrams are messages too', async (t) => {
  const path = join(socketDir(t), 'server.sock');
  const server = unixDatagram(t, path);
  // A connected, unbound datagram socket: send() needs no address.
  const sender = packetSocket(t, native().connectUnix(path, 'dgram'), 'datagram');
  t.true(sender.socket.send(Buffer.from('anonymous')));
  t.true(sender.socket.send(Buffer.alloc(0)));
  const unbound = native().connectUnix(path, 'dgram');
  native().sendDatagram(unbound, Buffer.from('also anonymous'), path);
  native().close(unbound);
  await server.recorder.until(() => server.recorder.messages.length === 3);
  t.deepEqual(server.recorder.messages, [
    { data: Buffer.from('anonymous'), address: undefined, port: undefined },
    { data: Buffer.alloc(0), address: undefined, port: undefined },
    { data: Buffer.from('also anonymous'), address: undefined, port: undefined },
  ]);
});

for (const host of ['127.0.0.1', '::1']) {
  test(`UDP through PacketSocket on ${host}: sender address and port, reply, empty datagram`, async (t) => {
    const a = packetSocket(t, native().bindUdp(host, 0), 'datagram');
    const b = packetSocket(t, native().bindUdp(host, 0), 'datagram');
    a.socket.startReading();
    b.socket.startReading();
    const aPort = native().describe(a.socket.fd).port!;
    const bPort = native().describe(b.socket.fd).port!;
    t.true(a.socket.send(Buffer.from('ping'), host, bPort));
    t.true(a.socket.send(Buffer.alloc(0), host, bPort));
    await b.recorder.until(() => b.recorder.messages.length === 2);
    t.deepEqual(b.recorder.messages, [
      { data: Buffer.from('ping'), address: host, port: aPort },
      { data: Buffer.alloc(0), address: host, port: aPort },
    ]);
    const ping = b.recorder.messages[0]!;
    t.true(b.socket.send(Buffer.from('pong'), ping.address, ping.port));
    await a.recorder.until(() => a.recorder.messages.length === 1);
    t.deepEqual(a.recorder.messages[0], { data: Buffer.from('pong'), address: host, port: bPort });
    // A datagram larger than UDP allows is refused at once.
    throwsLike(t, () => a.socket.send(Buffer.alloc(70_000), host, bPort), { code: 'EMSGSIZE', syscall: 'sendto' });
    t.throws(() => a.socket.send(Buffer.from('x'), 'not-an-ip', bPort), { code: 'ERR_INVALID_IP_ADDRESS' });
  });
}

test('seqpacket keeps message boundaries: many messages of varied sizes up to 100 KiB, in order, then the end', async (t) => {
  const { client, server, serverRecorder, clientRecorder } = await seqpacketPair(t);
  let seed = 42;
  const random = () => {
    seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const sizes = Array.from({ length: 300 }, (_, i) => (i % 50 === 7 ? 100 * 1024 : 1 + Math.floor(random() * 9000)));
  sizes.push(1, 2, 3, 65_535, 65_536, 65_537, 100 * 1024);
  const sent = sizes.map((size, index) => numbered(index, size));
  for (const message of sent) client.send(message);
  client.shutdown();
  server.startReading();
  await serverRecorder.until(() => serverRecorder.ended === 1, 'the end');
  t.is(serverRecorder.messages.length, sent.length);
  t.deepEqual(
    serverRecorder.messages.map((m) => m.data.length),
    sizes,
  );
  t.true(serverRecorder.messages.every((m, i) => m.data.equals(sent[i]!) && m.address === undefined && m.port === undefined));
  t.deepEqual(serverRecorder.errors, []);
  t.deepEqual(clientRecorder.errors, []);
  t.is(client.writableLength, 0);
});

test('seqpacket backpressure: send() returns false at the high-water mark, onDrain when the queue empties', async (t) => {
  const { client, server, serverRecorder, clientRecorder } = await seqpacketPair(t);
  const message = Buffer.alloc(4096, 1);
  const first = fillUntilFull(client, message);
  t.true(client.writableLength >= client.writableHighWaterMark, `writableLength ${client.writableLength}`);
  t.is(client.writableHighWaterMark, 64 * 1024);
  t.is(clientRecorder.drains, 0);
  server.startReading();
  await clientRecorder.until(() => clientRecorder.drains === 1, 'drain');
  t.is(client.writableLength, 0);
  await serverRecorder.until(() => serverRecorder.messages.length === first);

  // Again, then shutdown() with the queue full: the end comes after every message.
  server.stopReading();
  const second = fillUntilFull(client, message);
  client.shutdown();
  throwsLike(t, () => client.send(message), { code: 'EPIPE', syscall: 'send' });
  server.startReading();
  await serverRecorder.until(() => serverRecorder.ended === 1, 'the end');
  t.is(serverRecorder.messages.length, first + second);
  t.is(clientRecorder.drains, 2);
  t.deepEqual(clientRecorder.errors, []);
});

test('Unix datagram backpressure to a receiver that does not read: queued, retried, drained', async (t) => {
  const dir = socketDir(t);
  const receiverPath = join(dir, 'slow.sock');
  const receiver = unixDatagram(t, receiverPath, false);
  const sender = unixDatagram(t, join(dir, 'fast.sock'), false);
  const count = fillUntilFull(sender.socket, numbered(0, 1024), receiverPath);
  t.true(sender.socket.writableLength >= 64 * 1024);
  receiver.socket.startReading();
  await sender.recorder.until(() => sender.recorder.drains === 1, 'drain');
  await receiver.recorder.until(() => receiver.recorder.messages.length === count);
  t.deepEqual(sender.recorder.errors, []);
});

test('stopReading leaves messages in the kernel; startReading delivers them in order', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'paused.sock');
  const receiver = unixDatagram(t, path);
  receiver.socket.stopReading();
  const sender = native().bindUnixDatagram(join(dir, 'sender.sock'));
  t.teardown(() => native().close(sender));
  for (const word of ['one', 'two', 'three']) native().sendDatagram(sender, Buffer.from(word), path);
  await loopTurns(5);
  t.is(receiver.recorder.messages.length, 0);
  t.is(native().pendingBytes(receiver.socket.fd), 3, 'the first message waits in the kernel');
  receiver.socket.startReading();
  await receiver.recorder.until(() => receiver.recorder.messages.length === 3);
  t.deepEqual(
    receiver.recorder.messages.map((m) => m.data.toString()),
    ['one', 'two', 'three'],
  );
  t.is(native().pendingBytes(receiver.socket.fd), 0);
});

test('stopReading from inside onMessage stops the batch; the rest waits', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'r.sock');
  const receiver = unixDatagram(t, path, false);
  receiver.recorder.after = (event) => {
    if (event === 'message') receiver.socket.stopReading();
  };
  const sender = native().bindUnixDatagram(join(dir, 's.sock'));
  t.teardown(() => native().close(sender));
  for (let i = 0; i < 5; i++) native().sendDatagram(sender, numbered(i, 8), path);
  receiver.socket.startReading();
  await receiver.recorder.until(() => receiver.recorder.messages.length === 1);
  await loopTurns(5);
  t.is(receiver.recorder.messages.length, 1);
  receiver.recorder.after = undefined;
  receiver.socket.startReading();
  await receiver.recorder.until(() => receiver.recorder.messages.length === 5);
  t.deepEqual(
    receiver.recorder.messages.map((m) => m.data.readUInt32BE(0)),
    [0, 1, 2, 3, 4],
  );
});

test('close() from inside onMessage: nothing is called back afterwards; close is idempotent', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'closing.sock');
  const receiver = unixDatagram(t, path, false);
  receiver.recorder.after = (event) => {
    if (event === 'message') receiver.socket.close();
  };
  const sender = native().bindUnixDatagram(join(dir, 'sender.sock'));
  t.teardown(() => native().close(sender));
  for (let i = 0; i < 10; i++) native().sendDatagram(sender, numbered(i, 16), path);
  receiver.socket.startReading();
  await receiver.recorder.until(() => receiver.recorder.messages.length === 1);
  await loopTurns(5);
  t.is(receiver.recorder.messages.length, 1);
  t.is(receiver.socket.fd, -1);
  t.notThrows(() => receiver.socket.close());
  receiver.socket.startReading();
  throwsLike(t, () => receiver.socket.send(Buffer.from('x'), path), { code: 'EBADF', syscall: 'sendto' });
  await loopTurns(3);
  t.is(receiver.recorder.messages.length, 1);
  t.deepEqual(receiver.recorder.errors, []);
});

test('close() from inside onConnection and onDrain', async (t) => {
  const path = join(socketDir(t), 'accept.sock');
  const accepted = new Recorder();
  const server = new (native().SeqpacketServer)(native().listenUnix(path, 16, 'seqpacket'), accepted);
  t.teardown(() => server.close());
  accepted.after = () => server.close();
  const clients = [native().connectUnix(path, 'seqpacket'), native().connectUnix(path, 'seqpacket')];
  t.teardown(() => clients.forEach((fd) => native().close(fd)));
  server.start();
  await accepted.until(() => accepted.connections.length === 1);
  await loopTurns(5);
  t.is(accepted.connections.length, 1);
  native().close(accepted.connections[0]!);
  t.is(server.fd, -1);

  const { client, server: peer, clientRecorder } = await seqpacketPair(t);
  clientRecorder.after = (event) => {
    if (event === 'drain') client.close();
  };
  fillUntilFull(client, Buffer.alloc(8192));
  peer.startReading();
  await clientRecorder.until(() => clientRecorder.drains === 1);
  t.is(client.fd, -1);
  t.deepEqual(clientRecorder.errors, []);
});

test('a message larger than the receive buffer is dropped with EMSGSIZE; the next one arrives', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'small.sock');
  // SO_RCVBUF of a few KiB: the receive buffer is then the 64 KiB minimum.
  const receiver = packetSocket(t, native().bindUnixDatagram(path, { recvBufferSize: 1024 }), 'datagram');
  receiver.socket.startReading();
  const sender = native().bindUnixDatagram(join(dir, 'big.sock'), { sendBufferSize: 1024 * 1024 });
  t.teardown(() => native().close(sender));
  native().sendDatagram(sender, Buffer.alloc(100 * 1024, 9), path);
  native().sendDatagram(sender, Buffer.from('small'), path);
  await receiver.recorder.until(() => receiver.recorder.messages.length === 1);
  t.is(receiver.recorder.errors.length, 1);
  t.like(receiver.recorder.errors[0], { code: 'EMSGSIZE', errno: -90, syscall: 'recvmsg', size: 100 * 1024 });
  t.regex(receiver.recorder.errors[0]!.message, /^recvmsg EMSGSIZE message of 102400 bytes dropped/);
  t.deepEqual(receiver.recorder.messages[0]!.data, Buffer.from('small'));
});

test('a peer that closes with our messages unread: its own messages still arrive, then the end', async (t) => {
  const { client, server, serverRecorder, clientRecorder } = await seqpacketPair(t);
  server.send(Buffer.from('never read'));
  client.send(Buffer.from('first'));
  client.send(Buffer.from('second'));
  client.close();
  server.startReading();
  await serverRecorder.until(() => serverRecorder.ended === 1, 'the end');
  t.deepEqual(
    serverRecorder.messages.map((m) => m.data.toString()),
    ['first', 'second'],
  );
  t.deepEqual(serverRecorder.errors, []);
  t.is(clientRecorder.messages.length, 0);
  // The connection is gone: sending now fails at once.
  t.throws(() => server.send(Buffer.from('late')), { code: 'EPIPE' });
});

test('SeqpacketServer: stop() leaves connections in the accept queue, start() takes them; stream listeners too', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'q.sock');
  const accepted = new Recorder();
  const server = new (native().SeqpacketServer)(native().listenUnix(path, 16, 'seqpacket'), accepted);
  t.teardown(() => server.close());
  t.teardown(() => accepted.connections.forEach((fd) => native().close(fd)));
  server.start();
  server.stop();
  const client = native().connectUnix(path, 'seqpacket');
  t.teardown(() => native().close(client));
  await loopTurns(5);
  t.is(accepted.connections.length, 0);
  t.true(native().hasPendingConnection(server.fd));
  server.start();
  await accepted.until(() => accepted.connections.length === 1);
  t.false(native().hasPendingConnection(server.fd));
  const fd = accepted.connections[0]!;
  t.like(native().describe(fd), { domain: 'unix', type: 'seqpacket', listening: false, cloexec: true, path });
  t.deepEqual(native().peerCredentials(fd), { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });

  const streamPath = join(dir, 's.sock');
  const streamAccepted = new Recorder();
  const streamServer = new (native().SeqpacketServer)(native().listenUnix(streamPath, 16), streamAccepted);
  t.teardown(() => streamServer.close());
  t.teardown(() => streamAccepted.connections.forEach((c) => native().close(c)));
  streamServer.start();
  native().close(native().connectUnix(streamPath, 'stream'));
  await streamAccepted.until(() => streamAccepted.connections.length === 1);
  t.like(native().describe(streamAccepted.connections[0]!), { type: 'stream' });
});

test('callbacks run in the async context of their socket, each followed by its microtasks', async (t) => {
  const dir = socketDir(t);
  const path = join(dir, 'ctx.sock');
  const storage = new AsyncLocalStorage<string>();
  const seen: string[] = [];
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  const socket = storage.run('socket context', () =>
    new (native().PacketSocket)(native().bindUnixDatagram(path), 'datagram', {
      onMessage(data) {
        seen.push(`${data.toString()} in ${storage.getStore()}`);
        queueMicrotask(() => seen.push(`microtask after ${data.toString()}`));
        if (seen.length === 5) setImmediate(done);
      },
      onError: (err) => t.fail(err.message),
    }),
  );
  t.teardown(() => socket.close());
  const sender = native().bindUnixDatagram(join(dir, 'sender.sock'));
  t.teardown(() => native().close(sender));
  for (const word of ['a', 'b', 'c']) native().sendDatagram(sender, Buffer.from(word), path);
  storage.run('another context', () => socket.startReading());
  await finished;
  t.deepEqual(seen, ['a in socket context', 'microtask after a', 'b in socket context', 'microtask after b', 'c in socket context', 'microtask after c']);
});

test('arguments are validated before the fd changes hands', (t) => {
  const dir = socketDir(t);
  const { PacketSocket, SeqpacketServer } = native();
  const stream = native().listenUnix(join(dir, 's.sock'), 16);
  const dgram = native().bindUnixDatagram(join(dir, 'd.sock'));
  let dgramOwned = true; // until a PacketSocket takes it
  t.teardown(() => {
    native().close(stream);
    if (dgramOwned) native().close(dgram);
  });
  const callbacks = new Recorder();
  t.throws(() => new PacketSocket(stream, 'connected', callbacks), { code: 'ERR_INVALID_ARG_VALUE', message: "mode 'connected' needs a SOCK_SEQPACKET socket" });
  t.throws(() => new PacketSocket(stream, 'datagram', callbacks), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => new PacketSocket(dgram, 'stream' as 'datagram', callbacks), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => new PacketSocket(dgram, 'datagram', { onError() {} } as never), { code: 'ERR_INVALID_ARG_TYPE', message: 'callbacks.onMessage must be a function' });
  t.throws(() => new PacketSocket(dgram, 'datagram', { onMessage() {}, onError() {}, onEnd: 1 } as never), { message: 'callbacks.onEnd must be a function' });
  t.throws(() => new SeqpacketServer(dgram, callbacks), { code: 'ERR_INVALID_ARG_VALUE', message: 'fd must be a listening socket' });
  throwsLike(t, () => new PacketSocket(987_654, 'datagram', callbacks), { code: 'EBADF', syscall: 'getsockopt' });
  t.throws(() => (PacketSocket as unknown as (...args: unknown[]) => unknown)(dgram, 'datagram', callbacks), { instanceOf: TypeError });
  // Every refusal left the fds with their owner.
  t.like(native().describe(stream), { type: 'stream', listening: true });
  t.like(native().describe(dgram), { type: 'dgram' });

  const socket = new PacketSocket(dgram, 'datagram', callbacks);
  dgramOwned = false;
  t.teardown(() => socket.close());
  t.throws(() => socket.shutdown(), { code: 'ERR_INVALID_ARG_VALUE' });
  throwsLike(t, () => socket.send(Buffer.from('x'), join(dir, 'missing.sock')), { code: 'ENOENT', syscall: 'sendto', address: join(dir, 'missing.sock') });
  throwsLike(t, () => socket.send(Buffer.from('x')), { code: 'ENOTCONN', syscall: 'send' });
  t.throws(() => socket.send('x' as unknown as Buffer, join(dir, 'd.sock')), { code: 'ERR_INVALID_ARG_TYPE' });
  socket.close();
  t.is(socket.fd, -1, 'close() closed the fd it owned');
});

test("'connected' mode refuses empty messages and addresses", async (t) => {
  const { client } = await seqpacketPair(t);
  t.throws(() => client.send(Buffer.alloc(0)), { code: 'ERR_INVALID_ARG_VALUE', message: "an empty message cannot be sent on a 'connected' socket" });
  t.throws(() => client.send(Buffer.from('x'), '/tmp/somewhere'), { code: 'ERR_INVALID_ARG_VALUE' });
});

test.serial('fds passed with a seqpacket message are taken only with receiveFds: by default the kernel drops them and the message arrives whole', async (t) => {
  const { PacketSocket } = native();
  const received = (receiveFds: boolean | undefined) => {
    const [mine, theirs] = native().socketPair('seqpacket');
    const arrived: { data: string; fds: number[] | undefined }[] = [];
    const recorder = new Recorder();
    const options = receiveFds === undefined ? undefined : { receiveFds };
    const onMessage = (data: Buffer, _address: unknown, _port: unknown, fds?: number[]) => {
      arrived.push({ data: data.toString(), fds });
      recorder.onMessage(data, undefined, undefined);
    };
    const reader = new PacketSocket(mine, 'connected', { ...recorder, onMessage }, options);
    const sender = new PacketSocket(theirs, 'connected', new Recorder());
    t.teardown(() => {
      reader.close();
      sender.close();
    });
    return { reader, sender, arrived, recorder };
  };
  const passed = Array.from({ length: 8 }, () => native().dupCloexec(1));
  t.teardown(() => passed.forEach((fd) => native().close(fd)));

  // Counted by what they are (fd 1's file, as every one passed): Node's own threads open fds of their own meanwhile.
  const stdout = openFds().get(1);
  const held = () => [...openFds().values()].filter((target) => target === stdout).length;
  for (const receiveFds of [undefined, false]) {
    const { reader, sender, arrived, recorder } = received(receiveFds);
    const before = held();
    for (let i = 0; i < 10; i++) sender.sendWithFds(Buffer.from(`m${i}`), passed);
    reader.startReading();
    await recorder.until(() => arrived.length === 10, 'ten messages');
    t.deepEqual(arrived.map((m) => m.data), Array.from({ length: 10 }, (_, i) => `m${i}`));
    t.true(arrived.every((m) => m.fds === undefined), 'no fds reach JS');
    t.deepEqual(recorder.errors, [], 'a dropped fd is no error');
    t.is(held(), before, 'and none is held');
  }

  const { reader, sender, arrived, recorder } = received(true);
  sender.sendWithFds(Buffer.from('with'), passed);
  reader.startReading();
  await recorder.until(() => arrived.length === 1, 'the message');
  t.is(arrived[0]!.fds?.length, 8, 'receiveFds: the hand-over channel takes them');
  for (const fd of arrived[0]!.fds!) {
    t.true(native().describe(fd).cloexec);
    native().close(fd);
  }
  const dgram = native().bindUnixDatagram(abstractName('fds'));
  t.teardown(() => native().close(dgram));
  t.throws(() => new PacketSocket(dgram, 'datagram', new Recorder(), { receiveFds: true }), { code: 'ERR_INVALID_ARG_VALUE', message: "options.receiveFds is for a 'connected' PacketSocket" });
});

test('credentials: each Unix datagram comes with its sender uid (none for one queued before SO_PASSCRED); send() with an owner goes only to a socket file of that uid, never through a symlink', async (t) => {
  const { PacketSocket } = native();
  const dir = socketDir(t);
  const serverPath = join(dir, 'server.sock');
  const early = join(dir, 'early.sock');
  const serverFd = native().bindUnixDatagram(serverPath);
  const before = packetSocket(t, native().bindUnixDatagram(early), 'datagram').socket;
  before.send(Buffer.from('before'), serverPath); // queued before anyone asked for credentials
  const uids: (number | undefined)[] = [];
  const senders: { pid: number; uid: number; gid: number }[] = [];
  const recorder = new Recorder();
  const server = new PacketSocket(
    serverFd,
    'datagram',
    {
      ...recorder,
      onMessage: (data, address, port, _fds, sender) => {
        uids.push(sender?.uid);
        if (sender) senders.push(sender);
        recorder.onMessage(data, address, port);
      },
    },
    { credentials: true },
  );
  t.teardown(() => server.close());
  server.startReading();
  const clientPath = join(dir, 'client.sock');
  const client = unixDatagram(t, clientPath);
  client.socket.send(Buffer.from('after'), serverPath);
  await recorder.until(() => recorder.messages.length === 2, 'both datagrams');
  t.deepEqual(recorder.messages.map((m) => m.data.toString()), ['before', 'after']);
  t.deepEqual(uids, [undefined, process.getuid!()]);
  t.deepEqual(senders, [{ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() }], 'the sender: pid, uid and gid');

  // A reply to the client's own socket file goes; through a symlink, or to another uid's file, it does not.
  t.true(server.send(Buffer.from('reply'), clientPath, undefined, process.getuid!()));
  await client.recorder.until(() => client.recorder.messages.length === 1, 'the reply');
  throwsLike(t, () => server.send(Buffer.from('x'), clientPath, undefined, 65534), { code: 'EPERM', syscall: 'sendto', address: clientPath });
  const link = join(dir, 'link.sock');
  symlinkSync(clientPath, link);
  throwsLike(t, () => server.send(Buffer.from('x'), link, undefined, process.getuid!()), { code: 'ENOTSOCK', syscall: 'sendto', address: link });
  throwsLike(t, () => server.send(Buffer.from('x'), join(dir, 'gone.sock'), undefined, 0), { code: 'ENOENT', syscall: 'sendto' });
  // An abstract name has no file to check.
  const name = abstractName('owner');
  const abstract = packetSocket(t, native().bindUnixDatagram(name), 'datagram');
  abstract.socket.startReading();
  t.true(server.send(Buffer.from('abstract'), name, undefined, 12345));
  await abstract.recorder.until(() => abstract.recorder.messages.length === 1, 'the abstract reply');
  t.is(client.recorder.messages.length, 1, 'nothing more reached the client');

  const pair = native().socketPair('seqpacket');
  t.teardown(() => pair.forEach((fd) => native().close(fd)));
  t.throws(() => new PacketSocket(pair[0], 'connected', new Recorder(), { credentials: true }), { code: 'ERR_INVALID_ARG_VALUE', message: "options.credentials is for a Unix 'datagram' PacketSocket" });
});
