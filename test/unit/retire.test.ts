/**
 * The retire endpoint (maxDrainingGenerations) in one process: what it answers
 * a descendant, what it does with clients that speak nonsense or come from
 * another uid, and what a descendant believes: only the very process it asks
 * (a uid-65534 squatter that binds a drained generation's name is "gone").
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import { onLines } from '../../examples/lib/lines.ts';
import { fixtureCommand, waitUntil } from '../helpers/generations.ts';
import { Ancestors } from '../../src/generation/ancestors.ts';
import { native } from '../../src/internal/native.ts';
import { askAncestor, MAX_DRAINING_CHAIN, RetireEndpoint, type DrainingAncestor, type RetireHandler } from '../../src/generation/retire.ts';

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

function handler(initial: string): RetireHandler & { state: () => string; finished: number[]; asked: number; set(s: string): void } {
  let state = initial;
  const finished: number[] = [];
  return {
    asked: 0,
    state() {
      this.asked++;
      return state;
    },
    finish: (peer) => {
      if (state !== 'draining') return false;
      finished.push(peer.pid);
      return true;
    },
    finished,
    set: (s) => (state = s),
  };
}

/** A connection to an abstract name at its exact length, as the library makes them. */
function connectExact(name: string): Socket {
  return new Socket({ fd: native().connectUnix(`\0${name}`, 'stream'), readable: true, writable: true });
}

/** Send raw bytes, collect the answer until EOF. */
function raw(name: string, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connectExact(name);
    socket.write(bytes);
    let answer = '';
    socket.setEncoding('latin1').on('data', (d: string) => (answer += d));
    socket.on('end', () => resolve(answer));
    socket.on('error', reject);
  });
}

test('status, finish (answered at once, EOF once closed), refused when not draining, gone once closed', async (t) => {
  const h = handler('ready');
  const endpoint = await RetireEndpoint.open(h);
  const ancestor = { generation: 0, pid: process.pid, endpoint: endpoint.name };
  t.regex(endpoint.name, /^ecdysis-retire-[0-9a-f]{32}$/);
  t.deepEqual(await askAncestor(ancestor, 'status', 2_000), { kind: 'state', state: 'ready' });
  t.deepEqual(await askAncestor(ancestor, 'finish', 2_000), { kind: 'refused', state: 'ready' });
  t.deepEqual(h.finished, []);
  h.set('draining');
  // Told to finish: the answer comes at once, the end only when the generation is drained.
  const finishing = askAncestor(ancestor, 'finish', 10_000);
  await new Promise((r) => setImmediate(r));
  while (h.finished.length === 0) await new Promise((r) => setTimeout(r, 5));
  t.deepEqual(h.finished, [process.pid]);
  endpoint.close();
  t.deepEqual(await finishing, { kind: 'finishing', finished: true });
  t.deepEqual(await askAncestor(ancestor, 'status', 2_000), { kind: 'gone' });
});

test('a finish that is not over in time says so', async (t) => {
  const endpoint = await RetireEndpoint.open(handler('draining'));
  t.teardown(() => endpoint.close());
  // Long enough for the first answer ("finishing") on a loaded machine: with 300 ms it once came too late ("unknown").
  t.deepEqual(await askAncestor({ generation: 0, pid: process.pid, endpoint: endpoint.name }, 'finish', 2_000), { kind: 'finishing', finished: false });
});

test('nonsense gets "error" and changes nothing: unknown requests, an overlong line, binary', async (t) => {
  const h = handler('draining');
  const endpoint = await RetireEndpoint.open(h);
  t.teardown(() => endpoint.close());
  t.is(await raw(endpoint.name, 'upgrade\n'), 'error\n');
  t.is(await raw(endpoint.name, 'finish everyone\n'), 'error\n');
  t.is(await raw(endpoint.name, 'x'.repeat(10_000)), 'error\n');
  t.is(await raw(endpoint.name, Buffer.from([0xff, 0, 0x0a])), 'error\n');
  t.is(await raw(endpoint.name, 'status\nfinish 1\n'), 'state draining\n');
  t.deepEqual(h.finished, []);
  // The endpoint still answers.
  t.deepEqual(await askAncestor({ generation: 0, pid: process.pid, endpoint: endpoint.name }, 'status', 2_000), { kind: 'state', state: 'draining' });
});

test('an endpoint of the right process that answers something else is "unknown", never taken for drained', async (t) => {
  const name = `ecdysis-retire-${'0'.repeat(32)}-${process.pid}`;
  const fd = native().listenUnix(`\0${name}`, 8);
  const server = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  await new Promise<void>((resolve) => server.listen({ fd }, resolve));
  t.teardown(() => server.close());
  t.deepEqual(await askAncestor({ generation: 0, pid: process.pid, endpoint: name }, 'finish', 2_000), { kind: 'unknown' });
});

/** test/fixtures/retire-peer.ts as uid 65534 (exact-length abstract names, which Node's own net cannot reach); its records. */
function startPeer(t: ExecutionContext, args: string[]) {
  const child = spawn('setpriv', [...NOBODY, process.execPath, ...fixtureCommand('retire-peer.ts'), ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const records: { type: string; pid?: number; heard?: string; count?: number; answers?: Record<string, number> }[] = [];
  const waiters: (() => void)[] = [];
  onLines(child.stdout!, (line) => {
    records.push(JSON.parse(line) as (typeof records)[number]);
    for (const wake of waiters.splice(0)) wake();
  });
  const until = async (check: () => boolean) => {
    while (!check()) await new Promise<void>((resolve) => waiters.push(resolve));
  };
  return { child, records, until };
}

test('another uid (nobody, through setpriv) is answered "error" before its request is read, and finishes nothing', async (t) => {
  const h = handler('draining');
  const endpoint = await RetireEndpoint.open(h);
  t.teardown(() => endpoint.close());
  const peer = startPeer(t, ['hold', endpoint.name, '1']);
  peer.child.stdin!.write('go\n');
  await peer.until(() => peer.records.some((r) => r.type === 'held'));
  t.deepEqual(peer.records[0]!.answers, { 'error\n': 1 });
  t.deepEqual(h.finished, []);
  t.is(h.asked, 0);
  peer.child.stdin!.end();
});

/** The fds of this process (the endpoint's side of every connection is one). */
const fdCount = () => readdirSync('/proc/self/fd').length;

test('RETIRE-HALFOPEN: 1,000 connections of uid 65534 held open cost the endpoint no fd (each gets "error" and is closed)', async (t) => {
  const endpoint = await RetireEndpoint.open(handler('draining'));
  t.teardown(() => endpoint.close());
  const peer = startPeer(t, ['hold', endpoint.name, '1000']);
  const baseline = fdCount();
  peer.child.stdin!.write('go\n');
  await peer.until(() => peer.records.some((r) => r.type === 'held'));
  t.like(peer.records[0], { count: 1000, answers: { 'error\n': 1000 } });
  await waitUntil(() => fdCount() <= baseline, 10_000, `this process's fds back to ${baseline} (now ${fdCount()})`);
  t.is(peer.child.exitCode, null, 'the attacker still holds its 1,000 connections');
  peer.child.stdin!.end();
});

for (const where of ['both', 'padded'] as const) {
  test(`RETIRE-SQUAT: a uid-65534 squatter on an ancestor's name (${where === 'both' ? 'exact and padded' : 'padded only'}) is "gone", whatever it answers and whichever pid it claims, and hears nothing`, async (t) => {
    const name = `ecdysis-retire-${randomBytes(16).toString('hex')}`;
    // As an attacker who read the name in /proc/net/unix would hold it once free (test/fixtures/retire-peer.ts).
    const squatter = startPeer(t, ['squat', name, where]);
    await squatter.until(() => squatter.records.some((r) => r.type === 'bound'));
    const squatterPid = squatter.records.find((r) => r.type === 'bound')!.pid!;
    const asks: [number, 'status' | 'finish'][] = [
      [process.pid, 'status'], // the ancestor as named: this process, alive, root
      [process.pid, 'finish'],
      [squatterPid, 'status'], // a squatter that also claims its own pid is not of this uid
      [squatterPid, 'finish'],
    ];
    for (const [pid, request] of asks) {
      const started = performance.now();
      t.deepEqual(await askAncestor({ generation: 0, pid, endpoint: name }, request, 3_000), { kind: 'gone' }, `${request} to pid ${pid}`);
      t.true(performance.now() - started < 1_000, 'no wait on the squatter');
    }
    await squatter.until(() => squatter.records.filter((r) => r.type === 'connection').length === asks.length);
    t.deepEqual(squatter.records.filter((r) => r.type === 'connection').map((r) => r.heard), asks.map(() => ''), 'not a byte was sent to it');
    squatter.child.stdin!.end();
  });
}

test('RETIRE-SQUAT: an ancestor whose pid is gone is "gone" without a connection, even if something answers at its name', async (t) => {
  const h = handler('draining');
  const endpoint = await RetireEndpoint.open(h);
  t.teardown(() => endpoint.close());
  const exited = spawn('true');
  await new Promise((resolve) => exited.on('exit', resolve));
  t.deepEqual(await askAncestor({ generation: 0, pid: exited.pid!, endpoint: endpoint.name }, 'status', 2_000), { kind: 'gone' });
  t.is(h.asked, 0);
});

test('RETIRE-SQUAT: the chain a parent sends holds at most maxDrainingGenerations entries, the newest, with itself last, however many ancestors still drain', async (t) => {
  // 70 ancestors that really drain (endpoints of this process): more than a hello may carry.
  const endpoints = await Promise.all(Array.from({ length: 70 }, () => RetireEndpoint.open(handler('draining'))));
  t.teardown(() => endpoints.forEach((e) => e.close()));
  const ancestors: DrainingAncestor[] = endpoints.map((e, generation) => ({ generation, pid: process.pid, endpoint: e.name }));
  for (const max of [3, MAX_DRAINING_CHAIN]) {
    const draining = new Ancestors(max, 70, ancestors);
    t.teardown(() => draining.close());
    const chain = (await draining.chainForChild(handler('ready')))!;
    t.is(chain.length, max);
    t.deepEqual(chain.slice(0, -1), ancestors.slice(-(max - 1)), 'the newest ancestors');
    t.like(chain.at(-1), { generation: 70, pid: process.pid });
  }
});
