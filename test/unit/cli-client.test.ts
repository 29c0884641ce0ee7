/**
 * The CLI's side of the control protocol against a server in this process (a
 * seam): the client itself, and the compiled `ecdysis` command against fake
 * servers that misbehave.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { request } from '../../src/cli/client.ts';
import { cli } from '../helpers/cli.ts';

/** A control server that answers every line and never closes a connection (a real one keeps it for more commands). */
async function holdingServer(t: { teardown(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-cli-'));
  const path = join(dir, 'control.sock');
  const connections: Socket[] = [];
  const closed: Promise<void>[] = [];
  const server = createServer((socket) => {
    connections.push(socket);
    closed.push(new Promise((resolve) => socket.once('close', () => resolve())));
    socket.on('error', () => {});
    socket.on('data', () => socket.write(`${JSON.stringify({ ok: true, pid: 1, generation: 0 })}\n`));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(() => {
    for (const c of connections) c.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, closed, connections };
}

test('status and upgrade close their connection once answered, not at the server\'s idle timeout', async (t) => {
  const server = await holdingServer(t);
  for (const command of ['status', 'upgrade'] as const) {
    const { reply } = await request(server.path, command, 5_000);
    t.like(reply, { ok: true, pid: 1 });
  }
  // The server never closes: only the client can have ended these.
  const guard = new Promise<string>((resolve) => setTimeout(() => resolve('still open after 20 s'), 20_000).unref());
  t.is(await Promise.race([Promise.all(server.closed).then(() => 'closed'), guard]), 'closed');
  t.is(server.closed.length, 2);
});

test('a stop that waits keeps its connection until the server closes it', async (t) => {
  const server = await holdingServer(t);
  const { closed } = await request(server.path, 'stop', 5_000, { awaitClose: true });
  let ended = false;
  void closed.then(() => (ended = true));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(ended, 'still open while the server holds it');
  server.connections[0]!.destroy(); // the stopping process exits
  await closed;
  t.true(ended);
});

type Answer = Record<string, unknown> | 'close' | undefined;

/**
 * A fake control server: `answer(line, connection)` gives the JSON answer of
 * each line, or 'close' to close that connection without one. Connections are
 * numbered from 1 in the order they arrive.
 */
async function fakeServer(t: { teardown(fn: () => void): void }, answer: (line: string, connection: number) => Answer) {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-cli-'));
  const path = join(dir, 'control.sock');
  const sockets: Socket[] = [];
  let count = 0;
  const server = createServer((socket) => {
    const connection = ++count;
    sockets.push(socket);
    socket.on('error', () => {});
    let buffered = '';
    socket.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk;
      for (let newline = buffered.indexOf('\n'); newline !== -1; newline = buffered.indexOf('\n')) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        const reply = answer(line, connection);
        if (reply === 'close') return void socket.destroy();
        if (reply) socket.write(`${JSON.stringify({ protocol: 1, ...reply })}\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, server };
}

const status = (pid: number, generation: number, more: Record<string, unknown> = {}) => ({ ok: true, pid, generation, state: 'ready', parentAlive: false, upgrade: null, listeners: [], ...more });

test('ecdysis upgrade: the server closes without answering the upgrade while its successor takes the socket (which answers only after two more closed connections): exit 0, the successor named, as status says', async (t) => {
  let upgradedOn = 0;
  const server = await fakeServer(t, (line, connection) => {
    if (upgradedOn === 0 && line === 'status') return status(1001, 3);
    if (line === 'upgrade') {
      upgradedOn = connection;
      return 'close';
    }
    // The old process still accepts a moment while it exits, and answers nothing.
    if (connection <= upgradedOn + 2) return 'close';
    return line === 'status' ? status(2002, 4) : { ok: false, code: 'ERR_UNEXPECTED', message: line };
  });
  const result = await cli(['upgrade', '--socket', server.path, '--timeout', '30000']);
  t.is(result.code, 0, result.stderr);
  t.is(result.stdout, 'upgraded: pid 2002 (generation 4)\n');
  t.regex(result.stderr, /^pid 1001 \(generation 3\) closed the connection without answering the upgrade; .* is served by its successor now\n$/);
});

test('ecdysis upgrade: the server closes without answering and still serves, not upgrading: exit 1, the upgrade did not take effect', async (t) => {
  const server = await fakeServer(t, (line) => (line === 'upgrade' ? 'close' : status(1001, 3)));
  const result = await cli(['upgrade', '--socket', server.path, '--timeout', '30000']);
  t.is(result.code, 1, result.stderr);
  t.is(result.stdout, '');
  t.regex(result.stderr, /^upgrade failed: pid 1001 \(generation 3\) closed the connection without an answer and still serves \(ready\): the upgrade did not take effect\n$/);
});

test('ecdysis upgrade: the server closes without answering and nothing answers status again within --timeout: exit 2, the outcome is unknown', async (t) => {
  const server = await fakeServer(t, (line, connection) => (line === 'upgrade' || connection > 1 ? 'close' : status(1001, 3)));
  const result = await cli(['upgrade', '--socket', server.path, '--timeout', '1500']);
  t.is(result.code, 2, result.stderr);
  t.regex(result.stderr, /closed the connection without answering the upgrade, and whether it happened is unknown/);
});

test('what a server answers is printed with its control characters escaped (C0, DEL, C1): status, status --json, a failed upgrade', async (t) => {
  const evil = status(4242, 0, {
    state: 'ready\u001b]0;pwned\u0007\u001b[2J',
    listeners: [{ key: 'k\u009b31m', kind: 'tcp\u007f', address: '127.0.0.1:1\r', connections: 0 }],
  });
  const server = await fakeServer(t, (line) => (line === 'upgrade' ? { ok: false, code: 'ERR_X\u001b[31m', message: 'boom\u001b[1A\u0085' } : evil));
  const raw = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/;
  const text = await cli(['status', '--socket', server.path]);
  t.is(text.code, 0, text.stderr);
  t.notRegex(text.stdout, raw);
  t.is(text.stdout, 'pid 4242, generation 0, ready\\x1b]0;pwned\\x07\\x1b[2J\n  tcp\\x7f         127.0.0.1:1\\r  0 connections  (k\\x9b31m)\n');
  const json = await cli(['status', '--socket', server.path, '--json']);
  t.is(json.code, 0, json.stderr);
  t.notRegex(json.stdout, raw);
  t.deepEqual(JSON.parse(json.stdout), { protocol: 1, ...evil }, 'the same value, escaped as JSON');
  const failed = await cli(['upgrade', '--socket', server.path]);
  t.is(failed.code, 1);
  t.notRegex(failed.stderr, raw);
  t.is(failed.stderr, 'upgrade failed: ERR_X\\x1b[31m: boom\\x1b[1A\\x85\n');
});
