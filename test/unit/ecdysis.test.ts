/**
 * One generation in this process (generation 0, no signals installed): the
 * listener views, the lifecycle stream, the refusals that need no child.
 */
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, take, toArray } from 'rxjs';
import { Ecdysis, ErrorCodes, type EcdysisEvent } from '../../src/index.ts';
import { waitUntil } from '../helpers/generations.ts';

const quiet = { upgradeOn: [], stopOn: [] };
/** What upgrade() refuses with: in local mode (local-mode.test.ts runs this file again there) always the same. */
const upgradeRefusal = (code: string) => (process.env.ECDYSIS_LOCAL === '1' ? 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED' : code);

function connectTo(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.on('error', reject);
  });
}

test('listeners accept only once ready(); a connection made before waits in the queue', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const accepted = firstValueFrom(web.connections());
  const client = await connectTo(web.port);
  t.teardown(() => client.destroy());
  t.false(web.accepting);
  await new Promise((r) => setTimeout(r, 50));
  await ecdysis.ready();
  const socket = await accepted;
  t.is(socket.remotePort, client.localPort);
  t.is(web.connectionCount, 1);
});

test('async iterator and Observable complete when the generation stops; each connection goes to one consumer', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  await ecdysis.ready();
  const viaObservable: Socket[] = [];
  const observed = new Promise<void>((resolve) => web.connections().subscribe({ next: (s) => viaObservable.push(s), complete: resolve }));
  const viaIterator: Socket[] = [];
  const iterated = (async () => {
    for await (const socket of web) viaIterator.push(socket);
  })();
  const clients = await Promise.all(Array.from({ length: 6 }, () => connectTo(web.port)));
  t.teardown(() => clients.forEach((c) => c.destroy()));
  await waitUntil(() => viaObservable.length + viaIterator.length >= 6, 10_000, 'the six connections were handed out');
  t.is(viaObservable.length + viaIterator.length, 6);
  t.true(viaObservable.length > 0 && viaIterator.length > 0, 'shared between consumers');
  ecdysis.stop();
  await Promise.all([observed, iterated]);
  await web.closed;
  t.false(web.accepting);
  const late = await firstValueFrom(web.connections().pipe(toArray()));
  t.deepEqual(late, [], 'a subscriber after the stop completes at once');
});

test('breaking out of for-await releases the listener; an aborted signal ends the iteration', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  await ecdysis.ready();
  const client = await connectTo(web.port);
  t.teardown(() => client.destroy());
  for await (const socket of web) {
    t.truthy(socket);
    break;
  }
  t.false(web.accepting, 'no consumer left: accepting paused (the kernel keeps queueing)');
  const controller = new AbortController();
  const iteration = (async () => {
    for await (const _ of web.iterate({ signal: controller.signal })) {
      // nothing arrives
    }
  })();
  await waitUntil(() => web.accepting, 10_000, 'accepting again for the new consumer');
  t.true(web.accepting);
  controller.abort(new Error('enough'));
  await t.throwsAsync(iteration, { message: 'enough' });
  t.false(web.accepting);
});

test('events(): a late subscriber first gets the current state; the lifecycle follows', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const first = await firstValueFrom(ecdysis.events());
  t.like(first, { type: 'state', state: 'starting', generation: 0, isChild: false, parentAlive: false, pid: process.pid });
  const seen: EcdysisEvent[] = [];
  ecdysis.events().subscribe((e) => seen.push(e));
  await ecdysis.ready();
  t.like(await firstValueFrom(ecdysis.events()), { type: 'state', state: 'ready' });
  ecdysis.stop();
  t.like(await ecdysis.exit, { mode: 'stop', reason: 'stop()' });
  t.true(ecdysis.signal.aborted);
  t.is((ecdysis.signal.reason as { code: string }).code, 'ERR_ECDYSIS_STOPPING');
  const result = await ecdysis.drain({ timeout: 1000 });
  t.like(result, { connections: 0, destroyed: 0, timedOut: false });
  t.deepEqual(seen.map((e) => e.type), ['state', 'ready', 'exiting', 'drained']);
  const after = await firstValueFrom(ecdysis.events().pipe(take(5), toArray()));
  t.deepEqual(after.map((e) => e.type), ['state'], 'completes after drained');
});

test('refusals without a child: upgrade before ready, upgrade while stopping, listen while stopping, key conflicts', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  await t.throwsAsync(ecdysis.upgrade(), { code: upgradeRefusal('ERR_ECDYSIS_NOT_READY') });
  await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 }); // a second port-0 request is a second socket
  await t.throwsAsync(ecdysis.listenTcp({ host: '127.0.0.1', port: 0, name: 'x' }).then(() => ecdysis.listenTcp({ host: '127.0.0.1', port: 0, name: 'x' })), {
    code: 'ERR_ECDYSIS_LISTENER_CONFLICT',
  });
  await t.throwsAsync(ecdysis.listenTcp({ host: '127.0.0.1', port: 70_000 }), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.port"/ });
  await t.throwsAsync(ecdysis.listenUnix(''), { code: 'ERR_ECDYSIS_INVALID_OPTION' });
  // A misspelt option is an error, never a silent default.
  await t.throwsAsync(ecdysis.listenTcp({ host: '127.0.0.1', port: 0, reuseport: true } as never), {
    code: 'ERR_ECDYSIS_INVALID_OPTION',
    message: /"options.reuseport" is not an option \(known: host, port, backlog, reusePort/,
  });
  await t.throwsAsync(ecdysis.listenUnix('/tmp/x.sock', { backLog: 5 } as never), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.backLog"/ });
  await t.throwsAsync(ecdysis.listenTcp(undefined as never), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options" must be an object/ });
  await ecdysis.ready();
  ecdysis.stop();
  await t.throwsAsync(ecdysis.upgrade(), { code: upgradeRefusal('ERR_ECDYSIS_STOPPING') });
  await t.throwsAsync(ecdysis.listenTcp({ host: '127.0.0.1', port: 0 }), { code: 'ERR_ECDYSIS_STOPPING' });
  await t.throwsAsync(ecdysis.ready(), { code: 'ERR_ECDYSIS_STOPPING' });
  t.true(Object.keys(ErrorCodes).every((code) => code.startsWith('ERR_ECDYSIS_')));
});

test('bad input to methods is a rejection naming the option, never a synchronous throw', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  let drained: Promise<unknown> | undefined;
  t.notThrows(() => {
    drained = ecdysis.drain(null as never);
  });
  await t.throwsAsync(drained!, { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options" must be an object/ });
  await t.throwsAsync(ecdysis.drain({ timeout: -1 }), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.timeout"/ });
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  await t.throwsAsync(ecdysis.listenUnix(join(dir, 's.sock'), { mode: 0o4777 }), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.mode" must be an integer from 0 to 511/ });
  await t.throwsAsync(Ecdysis.create({ ...quiet, pidFile: join(dir, 'missing', 'app.pid') }), {
    code: 'ERR_ECDYSIS_INVALID_OPTION',
    message: /"options.pidFile" is in .*missing, which cannot be used \(ENOENT\)/,
  });
});

test('ready() that cannot write the PID file rejects with a coded error, stays starting, and can be called again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const runDir = join(dir, 'run');
  mkdirSync(runDir);
  const ecdysis = await Ecdysis.create({ ...quiet, pidFile: join(runDir, 'app.pid') });
  t.teardown(() => ecdysis.stop());
  rmSync(runDir, { recursive: true });
  await t.throwsAsync(ecdysis.ready(), { code: 'ERR_ECDYSIS_PID_FILE', message: /app\.pid.*ENOENT/ });
  t.is(ecdysis.state, 'starting');
  mkdirSync(runDir);
  await ecdysis.ready();
  t.is(ecdysis.state, 'ready');
  t.is(readFileSync(join(runDir, 'app.pid'), 'utf8'), `${process.pid}\n`);
});

test('drain(): raw connections the application leaves open are destroyed at the deadline', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const sockets: Socket[] = [];
  web.connections().subscribe((s) => sockets.push(s));
  await ecdysis.ready();
  const clients = await Promise.all([connectTo(web.port), connectTo(web.port)]);
  t.teardown(() => clients.forEach((c) => c.destroy()));
  await waitUntil(() => sockets.length === 2, 10_000, 'both connections were handed out');
  // The application finishes its work on one connection shortly after shutdown begins.
  ecdysis.signal.addEventListener('abort', () => setTimeout(() => sockets[0]!.end(), 200));
  ecdysis.stop();
  const result = await ecdysis.drain({ timeout: 400 });
  t.like(result, { connections: 2, completed: 1, destroyed: 1, timedOut: true });
  t.true(result.elapsedMs >= 390);
});

test('stopOnShutdown: false keeps a listener accepting through a stop', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const admin = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0, stopOnShutdown: false });
  web.connections().subscribe();
  const adminSockets: Socket[] = [];
  admin.connections().subscribe((s) => adminSockets.push(s));
  await ecdysis.ready();
  ecdysis.stop();
  await web.closed;
  t.false(web.accepting);
  t.true(admin.accepting);
  const client = await connectTo(admin.port);
  t.teardown(() => client.destroy());
  await waitUntil(() => adminSockets.length >= 1, 10_000, 'the admin connection was handed out');
  t.is(adminSockets.length, 1);
  await t.throwsAsync(connectTo(web.port), { code: 'ECONNREFUSED' });
  // Its connections are the application's; drain() does not wait for them, and
  // afterwards the listener is closed for good too.
  const result = await ecdysis.drain({ timeout: 500 });
  t.like(result, { connections: 0, timedOut: false });
  t.false(admin.accepting);
  await t.throwsAsync(connectTo(admin.port), { code: 'ECONNREFUSED' });
});

test('partial stop: stops accepting but keeps the socket open, connections keep queueing', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  web.connections().subscribe();
  await ecdysis.ready();
  ecdysis.partialStop();
  t.like(await ecdysis.exit, { mode: 'partial-stop' });
  t.false(web.accepting);
  const client = await connectTo(web.port); // queued by the kernel, not refused
  t.teardown(() => client.destroy());
  t.pass();
});

test('Ecdysis.create refuses garbage options with the option named', async (t) => {
  await t.throwsAsync(Ecdysis.create({ upgradeTimeout: -1 }), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /"options.upgradeTimeout"/ });
});

test('events() and connections() are instances of the rxjs Observable users import', async (t) => {
  const { Observable } = await import('rxjs');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  t.true(ecdysis.events() instanceof Observable);
  t.true(web.connections() instanceof Observable);
});

test('a busy iterator gets a bounded queue (the kernel keeps the rest); what nobody took is counted as destroyed', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  await ecdysis.ready();
  const iterator = web.iterate();
  const first = iterator.next();
  const clients = await Promise.all(Array.from({ length: 20 }, () => connectTo(web.port)));
  t.teardown(() => clients.forEach((c) => c.destroy()));
  t.false((await first).done);
  // Until the queue for the busy iterator is full (no sleep: this file also runs, busier, in local-mode.test.ts).
  await waitUntil(() => !web.accepting, 10_000, 'accepting paused while the iterator is busy');
  t.true(web.connectionCount >= 2 && web.connectionCount <= 9, `accepted ahead: ${web.connectionCount}`);
  const accepted = web.connectionCount;
  ecdysis.stop();
  await iterator.return!();
  const result = await ecdysis.drain({ timeout: 300 });
  // The one handed out is destroyed at the deadline; the queued ones when the iterator left.
  t.like(result, { connections: accepted, destroyed: accepted, completed: 0 });
});

test('listenUnix: a concurrent request for the same key conflicts; a stop during the awaits leaves nothing behind', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const { mkdtempSync, existsSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-unit-'));
  const both = await Promise.allSettled([
    ecdysis.listenUnix(join(dir, 'a.sock'), { name: 'same' }),
    ecdysis.listenUnix(join(dir, 'b.sock'), { name: 'same' }),
  ]);
  t.is(both.filter((r) => r.status === 'fulfilled').length, 1);
  t.like((both.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason, { code: 'ERR_ECDYSIS_LISTENER_CONFLICT' });
  const late = ecdysis.listenUnix(join(dir, 'late.sock'), { mode: 0o600 });
  ecdysis.stop();
  await t.throwsAsync(late, { code: 'ERR_ECDYSIS_STOPPING' });
  t.false(existsSync(join(dir, 'late.sock')), 'the socket file made meanwhile is removed');
});

test('ready() called twice at once (with a PID file) resolves for both callers', async (t) => {
  const { mkdtempSync, readFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const pidFile = join(mkdtempSync(join(tmpdir(), 'ecdysis-unit-')), 'app.pid');
  const ecdysis = await Ecdysis.create({ ...quiet, pidFile });
  t.teardown(() => ecdysis.stop());
  await Promise.all([ecdysis.ready(), ecdysis.ready()]);
  await ecdysis.ready();
  t.is(readFileSync(pidFile, 'utf8'), `${process.pid}\n`);
  t.is(ecdysis.state, 'ready');
});

test('stopDelay: a stop first makes a lame duck (not ready, still accepting, upgrades refused), a second stop ends the delay at once', async (t) => {
  const ecdysis = await Ecdysis.create({ ...quiet, stopDelay: 600_000 });
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const events: EcdysisEvent[] = [];
  ecdysis.events().subscribe((e) => events.push(e));
  const accepted: Socket[] = [];
  web.connections().subscribe((socket) => accepted.push(socket.end('hi')));
  await ecdysis.ready();
  t.like(await ecdysis.health(), { live: true, ready: true, state: 'ready' });
  ecdysis.stop();
  t.is(ecdysis.state, 'lame-duck');
  t.like(events.at(-1), { type: 'lame-duck', mode: 'stop', reason: 'stop()', delayMs: 600_000 });
  t.like(await ecdysis.health(), { live: true, ready: false, state: 'lame-duck' });
  t.false(ecdysis.signal.aborted, 'the generation serves on: its signal is not aborted');
  // Still accepting.
  const client = await connectTo(web.port);
  t.teardown(() => client.destroy());
  await waitUntil(() => accepted.length === 1, 5_000, 'the connection accepted during the delay');
  await t.throwsAsync(ecdysis.upgrade(), { code: upgradeRefusal('ERR_ECDYSIS_STOPPING') });
  await t.throwsAsync(ecdysis.listenTcp({ host: '127.0.0.1', port: 0 }), { code: 'ERR_ECDYSIS_STOPPING' });
  // The second stop: the stop itself, now.
  ecdysis.stop();
  t.like(await ecdysis.exit, { mode: 'stop', reason: 'stop()' });
  t.true(ecdysis.signal.aborted);
});

test('addHealthCheck(): live and ready follow the checks (false, a throw, a rejection or no answer within 1 s fail one); bad names are refused', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  await ecdysis.ready();
  let healthy = true;
  const remove = ecdysis.addHealthCheck('db', () => healthy);
  t.like(await ecdysis.health(), { live: true, ready: true, checks: { db: true } });
  healthy = false;
  t.like(await ecdysis.health(), { live: false, ready: false, checks: { db: false } });
  remove();
  ecdysis.addHealthCheck('throws', () => {
    throw new Error('no');
  });
  ecdysis.addHealthCheck('rejects', () => Promise.reject(new Error('no')));
  ecdysis.addHealthCheck('hangs', () => new Promise<boolean>(() => {}));
  ecdysis.addHealthCheck('ok', async () => true);
  t.deepEqual((await ecdysis.health()).checks, { throws: false, rejects: false, hangs: false, ok: true });
  t.throws(() => ecdysis.addHealthCheck('ok', () => true), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /already a health check/ });
  t.throws(() => ecdysis.addHealthCheck('bad name!', () => true), { code: 'ERR_ECDYSIS_INVALID_OPTION' });
  t.throws(() => ecdysis.addHealthCheck('x', 'yes' as never), { code: 'ERR_ECDYSIS_INVALID_OPTION' });
});

test('UDP: a datagram read before a full stop is answered during the drain from the service\'s own socket, even when its fd number was taken again meanwhile (regression: EBADF, or a reply sent through whatever socket got the number)', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  const udp = await ecdysis.listenUdp({ host: '127.0.0.1', port: 0 });
  const { createSocket } = await import('node:dgram');
  const client = createSocket('udp4');
  const decoys: import('node:dgram').Socket[] = [];
  t.teardown(() => {
    client.close();
    for (const decoy of decoys) decoy.close();
  });
  await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', resolve));
  const got: { text: string; port: number }[] = [];
  client.on('message', (data, info) => got.push({ text: data.toString(), port: info.port }));
  await ecdysis.ready();
  const iterator = udp.iterate();
  client.send('question', udp.port, '127.0.0.1');
  const { value: question } = await iterator.next();
  ecdysis.stop();
  await udp.closed;
  // Sockets opened after the stop take the lowest free fd numbers: the one the service's socket had, among them.
  for (let i = 0; i < 4; i++) {
    const decoy = createSocket('udp4');
    decoys.push(decoy);
    await new Promise<void>((resolve) => decoy.bind(0, '127.0.0.1', resolve));
  }
  await question!.reply('late answer');
  await waitUntil(() => got.length === 1, 5_000, 'the late answer');
  t.deepEqual(got, [{ text: 'late answer', port: udp.port }]);
  await ecdysis.drain({ timeout: 1_000 });
  await t.throwsAsync(udp.send('too late', client.address().port, '127.0.0.1'), { code: 'ERR_ECDYSIS_STOPPING' });
});
