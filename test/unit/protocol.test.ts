import test from 'ava';
import {
  FrameDecoder,
  MAX_FRAME_BYTES,
  PROTOCOL_VERSION,
  encodeFrame,
  encodeUpgradeEnv,
  parseUpgradeEnv,
  validateChildFrame,
  validateHello,
  validateParentFrame,
} from '../../src/wire/protocol.ts';

const hello = {
  type: 'hello' as const,
  protocol: PROTOCOL_VERSION,
  parentPid: 42,
  generation: 3,
  upgradeTimeout: 60_000,
  sockets: [
    { key: 'tcp:127.0.0.1:0', kind: 'tcp' as const, fd: 4, host: '127.0.0.1', port: 4000 },
    { key: 'unix:/run/x.sock', kind: 'unix' as const, fd: 5, path: '/run/x.sock', pathInode: 77 },
  ],
};

test('a frame survives being split at every byte', (t) => {
  const bytes = Buffer.concat([encodeFrame(hello), encodeFrame({ type: 'ready', protocol: 1, pid: 9 })]);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const decoder = new FrameDecoder();
    const frames = [...decoder.push(bytes.subarray(0, cut)), ...decoder.push(bytes.subarray(cut))];
    t.is(frames.length, 2);
    t.deepEqual(validateHello(frames[0]!), hello);
    t.deepEqual(validateChildFrame(frames[1]!), { type: 'ready', protocol: 1, pid: 9 });
    t.is(decoder.pending, 0);
  }
});

test('an announced length over the limit is refused before the body is read', (t) => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(MAX_FRAME_BYTES + 1);
  t.throws(() => new FrameDecoder().push(header), { code: 'ERR_ECDYSIS_PROTOCOL', message: /limit/ });
});

test('a body that is not a typed JSON object is refused', (t) => {
  for (const body of ['nope', '[]', '{"type": 3}', 'null']) {
    const bytes = Buffer.from(body);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(bytes.length);
    t.throws(() => new FrameDecoder().push(Buffer.concat([header, bytes])), { code: 'ERR_ECDYSIS_PROTOCOL' });
  }
});

test('the environment variable round-trips and garbage is a coded error', (t) => {
  // A parent announces version 2 (every child since 2 accepts it); hello's maxProtocol says more.
  t.is(encodeUpgradeEnv(), 'v2,fd=3');
  t.deepEqual(parseUpgradeEnv(encodeUpgradeEnv()), { protocol: 2, controlFd: 3 });
  for (const garbage of ['', 'v1', 'v1,fd=', 'v1,fd=3;rm -rf', 'x'.repeat(10_000), 'v1,fd=-3']) {
    t.throws(() => parseUpgradeEnv(garbage), { code: 'ERR_ECDYSIS_BAD_ENVIRONMENT' });
  }
  t.throws(() => parseUpgradeEnv('v1,fd=1'), { code: 'ERR_ECDYSIS_BAD_ENVIRONMENT', message: /stdio/ });
  t.deepEqual(parseUpgradeEnv('v1,fd=3'), { protocol: 1, controlFd: 3 });
  t.throws(() => parseUpgradeEnv(`v${PROTOCOL_VERSION + 1},fd=3`), { code: 'ERR_ECDYSIS_PROTOCOL_VERSION', message: new RegExp(`version ${PROTOCOL_VERSION + 1}.*versions 1 to ${PROTOCOL_VERSION}`) });
  t.throws(() => parseUpgradeEnv('v0,fd=3'), { code: 'ERR_ECDYSIS_PROTOCOL_VERSION' });
});

const ancestor = { generation: 0, pid: 42, endpoint: `ecdysis-retire-${'ab'.repeat(16)}` };

test('hello names the draining generations (maxDrainingGenerations), validated, and a hello without them is still valid', (t) => {
  t.deepEqual(validateHello({ ...hello, draining: [ancestor, { ...ancestor, generation: 1, pid: 43, extra: 1 }] }).draining, [ancestor, { ...ancestor, generation: 1, pid: 43 }]);
  t.is(validateHello(hello).draining, undefined);
  t.is(validateHello({ ...hello, nice: -5 }).nice, -5);
  t.is(validateHello(hello).nice, undefined);
});

test('hello validation names what is wrong', (t) => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ ...hello, type: 'ready' }, /expected a hello/],
    [{ ...hello, parentPid: 0 }, /parentPid/],
    [{ ...hello, generation: 0 }, /generation/],
    [{ ...hello, sockets: {} }, /sockets must be an array/],
    [{ ...hello, sockets: [{ key: '', kind: 'tcp', fd: 4 }] }, /key/],
    [{ ...hello, sockets: [{ key: "a", kind: "tcp", fd: 3, host: "h", port: 1 }] }, /fd must be an integer from 4 to/],
    [{ ...hello, sockets: [{ key: 'a', kind: 'tcp', fd: 4 }] }, /host and a port/],
    [{ ...hello, sockets: [{ key: 'a', kind: 'unix', fd: 4 }] }, /path/],
    [{ ...hello, sockets: [hello.sockets[0], { ...hello.sockets[0], fd: 5 }] }, /repeats/],
    [{ ...hello, generation: 1e300 }, /generation must be an integer from 1 to 2147483647/],
    [{ ...hello, generation: 2 ** 31 }, /generation/],
    [{ ...hello, parentPid: 1.5 }, /parentPid/],
    [{ ...hello, upgradeTimeout: undefined }, /upgradeTimeout/],
    [{ ...hello, upgradeTimeout: 0 }, /upgradeTimeout/],
    [{ ...hello, sockets: [{ key: 'a', kind: 7, fd: 4 }] }, /kind must be a non-empty string/],
    [{ ...hello, sockets: [{ key: 'a', kind: 'tcp', fd: 2 ** 40, host: 'h', port: 1 }] }, /fd must be an integer from 4/],
    [{ ...hello, sockets: [{ key: 'a', kind: 'tcp', fd: 4, host: 'h', port: 70000 }] }, /host and a port/],
    [{ ...hello, draining: {} }, /draining must be an array of at most 64/],
    [{ ...hello, draining: Array.from({ length: 65 }, () => ancestor) }, /draining must be an array of at most 64/],
    [{ ...hello, draining: [null] }, /draining\[0\] must be an object/],
    [{ ...hello, draining: [{ ...ancestor, endpoint: '/tmp/x' }] }, /draining\[0\] needs a generation, a pid and an endpoint/],
    [{ ...hello, draining: [ancestor, { ...ancestor, pid: 0 }] }, /draining\[1\] needs/],
    [{ ...hello, nice: 20 }, /nice must be an integer from -20 to 19/],
    [{ ...hello, nice: -21 }, /nice must be an integer from -20 to 19/],
    [{ ...hello, nice: 1.5 }, /nice must be an integer from -20 to 19/],
    [{ ...hello, nice: '0' }, /nice must be an integer from -20 to 19/],
  ];
  for (const [frame, message] of cases) t.throws(() => validateHello(frame), { code: 'ERR_ECDYSIS_PROTOCOL', message });
  t.throws(() => validateHello({ ...hello, protocol: PROTOCOL_VERSION + 1 }), { code: 'ERR_ECDYSIS_PROTOCOL_VERSION' });
  t.throws(() => validateHello({ ...hello, handoffFd: 9 }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /handoff must be a boolean/ });
  t.throws(() => validateHello({ ...hello, handoffFd: 4, handoff: true }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /repeats a key or fd/ });
  t.throws(() => validateHello({ ...hello, protocol: 2, maxProtocol: 1 }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /maxProtocol/ });
  t.throws(() => validateHello({ ...hello, protocol: 2, maxProtocol: '4' }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /maxProtocol/ });
});

test('the version spoken: hello announces 2 and names its own in maxProtocol; the child speaks the lower of the two highest', (t) => {
  t.is(validateHello({ ...hello, protocol: 2, maxProtocol: PROTOCOL_VERSION }).protocol, PROTOCOL_VERSION);
  t.is(validateHello({ ...hello, protocol: 2, maxProtocol: 3 }).protocol, 3, 'a parent of version 3 speaks 3');
  t.is(validateHello({ ...hello, protocol: 2, maxProtocol: 99 }).protocol, PROTOCOL_VERSION, 'a newer parent: this child\'s own version');
  const { upgradeTimeout: _ignored, ...v2 } = hello;
  t.is(validateHello({ ...v2, protocol: 2 }).protocol, 2, 'a parent without maxProtocol (version 2, as released): version 2');
  t.throws(() => validateHello({ ...v2, protocol: 2, maxProtocol: 3 }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /upgradeTimeout/ }, 'version 3 rules once 3 is spoken');
});

test('a hello entry of a kind this version does not know is set aside, not fatal; version 2 needs no upgradeTimeout', (t) => {
  const newer = { ...hello, sockets: [...hello.sockets, { key: 'quic:x', kind: 'quic', fd: 9, anything: true }] };
  const parsed = validateHello(newer);
  t.deepEqual(parsed.sockets, hello.sockets);
  t.deepEqual(parsed.unknownFds, [9]);
  t.false('unknownFds' in JSON.parse(encodeFrame(parsed).subarray(4).toString()), 'never sent on the wire');
  const { upgradeTimeout: _ignored, ...v2 } = hello;
  t.is(validateHello({ ...v2, protocol: 2 }).upgradeTimeout, undefined);
});

test('child frames: ready, error and (version 3) released are understood, anything else is refused', (t) => {
  t.like(validateChildFrame({ type: 'error', protocol: 1, pid: 5, code: 'X', message: 'm' }), { type: 'error', code: 'X' });
  t.deepEqual(validateChildFrame({ type: 'released', protocol: 3, reason: 'stop' }), { type: 'released', protocol: 3, reason: 'stop' });
  t.throws(() => validateChildFrame({ type: 'released', protocol: 2, reason: 'stop' }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateChildFrame({ type: 'released', protocol: 3, reason: 'bored' }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateChildFrame({ type: 'ready', protocol: 1 }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateChildFrame({ type: 'ready', protocol: 99, pid: 1 }), { code: 'ERR_ECDYSIS_PROTOCOL_VERSION', message: /child speaks.*99/ });
});

test('parent frames after hello: commit, and (version 5) drained; anything else is refused', (t) => {
  t.deepEqual(validateParentFrame({ type: 'commit', protocol: 2 }), { type: 'commit', protocol: 2 });
  t.deepEqual(validateParentFrame({ type: 'drained', protocol: 5 }), { type: 'drained', protocol: 5 });
  t.throws(() => validateParentFrame({ type: 'drained', protocol: 4 }), { code: 'ERR_ECDYSIS_PROTOCOL' }, 'a version-4 child never gets it');
  t.throws(() => validateParentFrame({ type: 'hello', protocol: 5 }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.deepEqual(validateParentFrame({ type: 'rollback', protocol: 6, ok: false, reason: 'no' }), { type: 'rollback', protocol: 6, ok: false, reason: 'no' });
  t.throws(() => validateParentFrame({ type: 'rollback', protocol: 5, ok: true }), { code: 'ERR_ECDYSIS_PROTOCOL' }, 'rollback is version 6');
});

test('hello may carry the counters and when the upgrade was asked for; malformed ones are refused', (t) => {
  const metrics = { upgrades: { ok: 3, 'failed:ERR_ECDYSIS_CHILD_EXITED': 1, 'trigger:rss': 2 }, drained: { completed: 5, closedIdle: 1, destroyed: 0 }, lastUpgradeMs: 120 };
  t.deepEqual(validateHello({ ...hello, metrics, requestedAt: 1_700_000_000_000 }).metrics, metrics);
  t.throws(() => validateHello({ ...hello, metrics: { ...metrics, upgrades: { 'drop table': 1 } } }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /hello.metrics.upgrades is malformed/ });
  t.throws(() => validateHello({ ...hello, metrics: { ...metrics, drained: { completed: -1, closedIdle: 0, destroyed: 0 } } }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateHello({ ...hello, requestedAt: 'now' }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /requestedAt/ });
});

test('version 7: hello names a worker (index below count, count 1 to 64; generation 0 allowed only for a worker), and the worker frames', (t) => {
  const worker = { ...hello, generation: 0, worker: { index: 1, count: 2 } };
  t.deepEqual(validateHello(JSON.parse(JSON.stringify(worker))), worker);
  for (const bad of [{ index: 2, count: 2 }, { index: -1, count: 2 }, { index: 0, count: 0 }, { index: 0, count: 65 }, 'x', null]) {
    t.throws(() => validateHello({ ...worker, worker: bad }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /hello.worker/ });
  }
  t.throws(() => validateHello({ ...worker, protocol: 6, worker: { index: 0, count: 1 } }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateHello({ ...hello, generation: 0 }), { code: 'ERR_ECDYSIS_PROTOCOL', message: /generation/ });
  t.deepEqual(validateParentFrame({ type: 'stop', protocol: 7, mode: 'upgrade' }), { type: 'stop', protocol: 7, mode: 'upgrade' });
  t.deepEqual(validateParentFrame({ type: 'stop', protocol: 7, mode: 'stop', force: true }), { type: 'stop', protocol: 7, mode: 'stop', force: true });
  t.deepEqual(validateParentFrame({ type: 'resume', protocol: 7 }), { type: 'resume', protocol: 7 });
  t.throws(() => validateParentFrame({ type: 'stop', protocol: 7, mode: 'rollback' }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.throws(() => validateParentFrame({ type: 'resume', protocol: 6 }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  t.deepEqual(validateChildFrame({ type: 'status', protocol: 7, state: 'ready', connections: 3 }), { type: 'status', protocol: 7, state: 'ready', connections: 3 });
  t.deepEqual(validateChildFrame({ type: 'status', protocol: 7, state: 'drained', connections: 0, drain: { completed: 1, closedIdle: 2, destroyed: 0 } }), {
    type: 'status',
    protocol: 7,
    state: 'drained',
    connections: 0,
    drain: { completed: 1, closedIdle: 2, destroyed: 0 },
  });
  for (const bad of [{ state: 'x\n', connections: 0 }, { state: 'ready', connections: -1 }, { state: 'a'.repeat(33), connections: 0 }, { state: 'ready', connections: 0, drain: { completed: 'x' } }]) {
    t.throws(() => validateChildFrame({ type: 'status', protocol: 7, ...bad }), { code: 'ERR_ECDYSIS_PROTOCOL' });
  }
  t.throws(() => validateChildFrame({ type: 'status', protocol: 6, state: 'ready', connections: 0 }), { code: 'ERR_ECDYSIS_PROTOCOL' });
});

test('version 8: a worker\'s hello may name peerHandoffFd, the channel its predecessor hands over on (a seqpacket fd other than the others)', (t) => {
  const sockets = hello.sockets.map((s, i) => ({ ...s, fd: 5 + i }));
  const worker = { ...hello, sockets, generation: 1, handoffFd: 4, handoff: false, worker: { index: 0, count: 2 }, peerHandoffFd: 7 };
  t.deepEqual(validateHello(JSON.parse(JSON.stringify(worker))), worker);
  t.is(validateHello({ ...worker, protocol: 2, maxProtocol: 8 }).peerHandoffFd, 7);
  for (const bad of [
    { peerHandoffFd: 4 },
    { peerHandoffFd: 5 },
    { peerHandoffFd: 3 },
    { peerHandoffFd: 'x' },
    { worker: undefined },
    { handoffFd: undefined, handoff: undefined },
    { protocol: 2, maxProtocol: 7 },
  ]) {
    t.throws(() => validateHello({ ...worker, ...bad }), { code: 'ERR_ECDYSIS_PROTOCOL' }, JSON.stringify(bad));
  }
});

test("ready.serves (how many sockets of each group a new generation accepts on) and a stop order's successor: false: kept when well formed, a coded error or dropped when not", (t) => {
  t.deepEqual(validateChildFrame({ type: 'ready', protocol: 8, pid: 9, serves: 3 }), { type: 'ready', protocol: 8, pid: 9, serves: 3 });
  t.deepEqual(validateChildFrame({ type: 'ready', protocol: 8, pid: 9 }), { type: 'ready', protocol: 8, pid: 9 }, 'absent: every index has a successor');
  for (const serves of [0, 65, 1.5, '2', null]) {
    t.throws(() => validateChildFrame({ type: 'ready', protocol: 8, pid: 9, serves }), { code: 'ERR_ECDYSIS_PROTOCOL' }, `serves ${JSON.stringify(serves)}`);
  }
  t.deepEqual(validateParentFrame({ type: 'stop', protocol: 8, mode: 'upgrade', successor: false }), { type: 'stop', protocol: 8, mode: 'upgrade', successor: false });
  t.deepEqual(validateParentFrame({ type: 'stop', protocol: 8, mode: 'upgrade', successor: true }), { type: 'stop', protocol: 8, mode: 'upgrade' });
  t.deepEqual(validateParentFrame({ type: 'stop', protocol: 8, mode: 'stop', successor: false }), { type: 'stop', protocol: 8, mode: 'stop' }, 'only an upgrade has successors');
});
