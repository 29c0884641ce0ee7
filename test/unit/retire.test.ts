/**
 * The retire endpoint (maxDrainingGenerations) in one process: what it answers
 * a descendant, and what it does with clients that speak nonsense.
 */
import { connect } from 'node:net';
import test from 'ava';
import { runCommand } from '../helpers/run.ts';
import { askAncestor, RetireEndpoint, type RetireHandler } from '../../src/internal/retire.ts';

function handler(initial: string): RetireHandler & { state: () => string; finished: number[]; set(s: string): void } {
  let state = initial;
  const finished: number[] = [];
  return {
    state: () => state,
    finish: (peer) => {
      if (state !== 'draining') return false;
      finished.push(peer.pid);
      return true;
    },
    finished,
    set: (s) => (state = s),
  };
}

/** Send raw bytes, collect the answer until EOF. */
function raw(name: string, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path: `\0${name}` }, () => socket.write(bytes));
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
  t.deepEqual(await askAncestor({ generation: 0, pid: 1, endpoint: endpoint.name }, 'finish', 300), { kind: 'finishing', finished: false });
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
  t.deepEqual(await askAncestor({ generation: 0, pid: 1, endpoint: endpoint.name }, 'status', 2_000), { kind: 'state', state: 'draining' });
});

test('an endpoint that answers something else is "unknown", never taken for drained', async (t) => {
  const { createServer } = await import('node:net');
  const name = `ecdysis-retire-${'0'.repeat(32)}-${process.pid}`;
  const server = createServer((socket) => socket.end('HTTP/1.1 400 Bad Request\r\n\r\n'));
  await new Promise<void>((resolve) => server.listen({ path: `\0${name}` }, resolve));
  t.teardown(() => server.close());
  t.deepEqual(await askAncestor({ generation: 0, pid: 1, endpoint: name }, 'finish', 2_000), { kind: 'unknown' });
});

test('another uid (nobody, through setpriv) is answered "error" before its request is read, and finishes nothing', async (t) => {
  const h = handler('draining');
  const endpoint = await RetireEndpoint.open(h);
  t.teardown(() => endpoint.close());
  const script = `const s = require('node:net').connect({ path: '\\0' + process.argv[1] }, () => s.write('finish 1\\n')); s.setEncoding('utf8').on('data', (d) => process.stdout.write(d));`;
  const result = await runCommand('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script, endpoint.name], { timeoutMs: 30_000 });
  t.is(result.stdout, 'error\n', result.stderr);
  t.deepEqual(h.finished, []);
});
