/**
 * Hand-over beyond listeners, with real generations: live connections move
 * without the client noticing, state survives upgrades exactly, files move,
 * and a failed hand-over gives up nothing.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isAlive, startGenerations, upgrades, waitUntil } from '../helpers/generations.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-handoff-'));

interface Client {
  socket: Socket;
  sent: number;
  received: number[];
  generations: Set<number>;
  problems: string[];
  closed: boolean;
}

/** A long-lived client: a numbered line every `everyMs`, each echo checked for order. */
function longLivedClient(port: number, name: string, everyMs: number): Client {
  const socket = connect(port, '127.0.0.1');
  const client: Client = { socket, sent: 0, received: [], generations: new Set(), problems: [], closed: false };
  let buffered = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) !== -1) {
      const [who, n, gen] = buffered.slice(0, newline).split(' ');
      buffered = buffered.slice(newline + 1);
      if (who !== name) client.problems.push(`an answer for ${who}`);
      const expected = client.received.length;
      if (Number(n) !== expected) client.problems.push(`expected line ${expected}, got ${n}`);
      client.received.push(Number(n));
      client.generations.add(Number(gen));
    }
  });
  socket.on('error', (err) => client.problems.push(err.message));
  socket.on('close', () => (client.closed = true));
  const timer = setInterval(() => {
    if (!client.closed) socket.write(`${name} ${client.sent++}\n`);
  }, everyMs);
  socket.once('close', () => clearInterval(timer));
  (client as Client & { stop(): void }).stop = () => clearInterval(timer);
  return client;
}

test('50 long-lived connections move through 10 upgrades: no reconnect, no line lost, repeated or reordered', async (t) => {
  const g = startGenerations(t, 'handoff-service.ts');
  const port = (await g.ready(0)).port as number;
  const clients = Array.from({ length: 50 }, (_, i) => longLivedClient(port, `c${i}`, 10));
  t.teardown(() => clients.forEach((c) => c.socket.destroy()));
  await waitUntil(() => clients.every((c) => c.received.length > 3), 30_000, 'every client answered');
  await upgrades(g, 10);
  await waitUntil(() => clients.every((c) => c.generations.has(10)), 30_000, 'every client answered by generation 10');
  for (const c of clients) (c as Client & { stop(): void }).stop();
  await waitUntil(() => clients.every((c) => c.received.length === c.sent), 30_000, 'every line answered');
  const moved = g.records.filter((r) => r.type === 'handoff-outcome');
  t.log(`${clients.reduce((n, c) => n + c.sent, 0)} lines; hand-overs: ${moved.map((r) => `${r.outcome}/${r.sockets}`).join(' ')}`);
  t.deepEqual(clients.flatMap((c) => c.problems), []);
  t.false(clients.some((c) => c.closed), 'no connection was closed');
  t.true(clients.every((c) => c.generations.has(10)), 'every client is served by generation 10 now');
  t.true(clients.every((c) => c.generations.size >= 10), 'and was served by every generation on the way');
  t.true(moved.every((r) => r.outcome === 'committed'));
});

test('a counter kept in memory survives 20 upgrades exactly, a crashing new generation included; a file moves too', async (t) => {
  const dir = tempDir();
  const logPath = join(dir, 'log');
  const g = startGenerations(t, 'handoff-service.ts', { FIXTURE_FAIL: '5.1:exit-after-inherited', FIXTURE_STATE_DIR: dir, FIXTURE_LOG: logPath });
  const port = (await g.ready(0)).port as number;
  const ask = (line: string) =>
    new Promise<string>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => socket.write(`${line}\n`));
      socket.setEncoding('utf8');
      socket.once('data', (d: string) => {
        socket.destroy();
        resolve(d.trim());
      });
      socket.on('error', reject);
    });
  let expected = 0;
  for (let gen = 0; gen < 20; gen++) {
    for (let i = 0; i < 3; i++) {
      expected++;
      const answer = await ask(`probe ${i}`);
      t.is(Number(answer.split(' ')[3]), expected, answer);
    }
    await upgrades(g, 1, gen);
  }
  t.true(g.records.some((r) => r.event === 'child-failed' && r.handoff === 'kept'), JSON.stringify(g.records.filter((r) => r.event === 'child-failed')));
  const inherited = g.records.filter((r) => r.type === 'inherited' && r.gen === 20);
  t.like(inherited[0], { files: 1 });
  const lines = readFileSync(logPath, 'utf8').trim().split('\n');
  t.is(lines[0], 'gen 0');
  t.is(lines.at(-1), 'gen 20', 'every generation wrote to the same file, handed over');
});

test('a state larger than maxHandoffBytes: the upgrade fails with ERR_ECDYSIS_HANDOFF, the old generation serves on with its connections', async (t) => {
  const g = startGenerations(t, 'handoff-service.ts', { FIXTURE_MAX_HANDOFF: '10000', FIXTURE_STATE_PAD: '20000' });
  const first = await g.ready(0);
  const client = longLivedClient(first.port as number, 'big', 20);
  t.teardown(() => client.socket.destroy());
  await waitUntil(() => client.received.length > 3, 30_000, 'answers');
  process.kill(first.pid, 'SIGHUP');
  const failed = await g.event(0, 'child-failed');
  t.is(failed.code, 'ERR_ECDYSIS_HANDOFF');
  t.regex(failed.message as string, /more than maxHandoffBytes \(10000\)/);
  const before = client.received.length;
  await waitUntil(() => client.received.length > before + 5, 30_000, 'answers after the failed upgrade');
  (client as Client & { stop(): void }).stop();
  await waitUntil(() => client.received.length === client.sent, 30_000, 'every line answered');
  t.deepEqual(client.problems, []);
  t.false(client.closed);
  t.deepEqual([...client.generations], [0]);
});

test('a new generation that dies while the hand-over arrives, 20 times: every paused connection resumes, no client sees an error, fds flat', async (t) => {
  const dir = tempDir();
  const g = startGenerations(t, 'handoff-service.ts', { FIXTURE_FAIL: '1:die-while-receiving', FIXTURE_STATE_DIR: dir, FIXTURE_STATE_PAD: String(8 * 1024 * 1024) });
  const first = await g.ready(0);
  const clients = Array.from({ length: 5 }, (_, i) => longLivedClient(first.port as number, `d${i}`, 10));
  t.teardown(() => clients.forEach((c) => c.socket.destroy()));
  await waitUntil(() => clients.every((c) => c.received.length > 3), 30_000, 'answers');
  const { readdirSync } = await import('node:fs');
  const fds = () => readdirSync(`/proc/${first.pid}/fd`).length;
  let baseline = 0;
  for (let attempt = 1; attempt <= 20; attempt++) {
    const since = g.records.length;
    process.kill(first.pid, 'SIGHUP');
    await g.waitFor((r) => r.event === 'child-failed' && g.records.indexOf(r) >= since, 60_000, `attempt ${attempt} failed`);
    await g.waitFor((r) => r.type === 'handoff-outcome' && r.outcome === 'failed' && g.records.indexOf(r) >= since, 30_000, 'the hand-over given back');
    // The failed child reaped (its pidfd is held until then): only then is the table quiet.
    const spawned = await g.waitFor((r) => r.event === 'child-spawned' && g.records.indexOf(r) >= since, 30_000, `attempt ${attempt} spawned`);
    await waitUntil(() => !existsSync(`/proc/${spawned.childPid as number}`), 30_000, `attempt ${attempt}'s child reaped`);
    // The smallest of the first two quiet points: the test reads the table from outside,
    // and may read it while the library still closes what the failed attempt used
    // (its callback for the child's exit runs before the pidfd is closed).
    if (attempt <= 2) baseline = attempt === 1 ? fds() : Math.min(baseline, fds());
  }
  // A leaked fd never comes back (20 attempts would leave 18 or more); a transient one does.
  await waitUntil(() => fds() <= baseline, 10_000, 'the fd table back to its first count').catch(() => {});
  const after = fds();
  t.true(after <= baseline, `no more fds after 20 failed hand-overs than after the first two: ${after} against ${baseline}`);
  for (const c of clients) (c as Client & { stop(): void }).stop();
  await waitUntil(() => clients.every((c) => c.received.length === c.sent), 30_000, 'every line answered');
  t.deepEqual(clients.flatMap((c) => c.problems), []);
  t.false(clients.some((c) => c.closed));
  t.true(isAlive(first.pid));
});

test('ecdysis.channel(): messages both ways while both generations run', async (t) => {
  const g = startGenerations(t, 'handoff-service.ts');
  await g.ready(0);
  await upgrades(g, 1);
  const toChild = await g.waitFor((r) => r.type === 'channel' && r.gen === 1);
  t.like(toChild, { peer: 'parent', message: { hello: 'from generation 0 to 1' } });
  const toParent = await g.waitFor((r) => r.type === 'channel' && r.gen === 0);
  t.like(toParent, { peer: 'successor', message: { hello: 'from generation 1' } });
});

test('a new generation of the released protocol version 2 (no hand-over): the upgrade works, handoff-skipped says why, the old generation keeps its live connection and drains it', async (t) => {
  const { fixturesDir } = await import('../helpers/generations.ts');
  const { lineRequest } = await import('../helpers/line-client.ts');
  const g = startGenerations(t, 'handoff-service.ts', { FIXTURE_NEXT_COMMAND: JSON.stringify({ file: process.execPath, args: [`${fixturesDir}v2-child.mjs`] }) });
  const first = await g.ready(0);
  const port = first.port as number;
  const client = longLivedClient(port, 'old', 20);
  t.teardown(() => client.socket.destroy());
  await waitUntil(() => client.received.length > 3, 30_000, 'answers');
  process.kill(first.pid, 'SIGHUP');
  const hello = await g.waitFor((r) => r.v2 === true && r.type === 'hello');
  t.is(hello.protocol, 2, 'the parent spoke version 2 to it');
  const skipped = await g.event(0, 'handoff-skipped');
  t.regex(skipped.reason as string, /generation 1 speaks protocol 2, without hand-over: this generation kept its state and connections/);
  await g.waitFor((r) => r.v2 === true && r.type === 'serving');
  t.regex(await lineRequest({ port }, 'ping'), /^pong v2 \d+$/, 'the version-2 generation serves the listening socket');
  // The live connection stayed with generation 0 (nothing was handed over) and is served until its drain ends.
  const before = client.received.length;
  await waitUntil(() => client.received.length > before + 3 || client.closed, 30_000, 'answers after the upgrade');
  t.deepEqual([...client.generations], [0]);
  t.false(g.records.some((r) => r.type === 'handoff-outcome'), 'onHandoff never ran');
  await waitUntil(() => !isAlive(first.pid), 30_000, 'generation 0 drained and exited');
  t.deepEqual(client.problems.filter((p) => !/ECONNRESET/.test(p)), []);
});

test('the library lets go of a handed-over state once the new generation is ready: dropped by the application, it is collected, and its bytes were held once', async (t) => {
  const { Generations, fixtureCommand } = await import('../helpers/generations.ts');
  const bytes = 8 * 1024 * 1024;
  const g = new Generations(['--expose-gc', ...fixtureCommand('state-release.ts')], { FIXTURE_STATE_BYTES: String(bytes) });
  t.teardown(() => g.killAll());
  const first = await g.ready(0);
  process.kill(first.pid, 'SIGHUP');
  const inherited = await g.waitFor((r) => r.type === 'inherited' && r.gen === 1);
  t.like(inherited, { bytes, intact: true });
  const ready = await g.ready(1);
  t.true(ready.stateCollected, 'no reference to the state left in the library');
  t.true((ready.arrayBuffers as number) < bytes / 2, `array buffers after the state was dropped: ${ready.arrayBuffers} bytes`);
});
