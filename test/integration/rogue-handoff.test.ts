/**
 * A hand-over receiver against a parent that sends what no parent of ours
 * sends (the test plays that parent): fds riding on frames that carry none,
 * keys given twice, a socket's unread bytes larger than maxHandoffBytes or than
 * it said, frames after the end. Each case is closed or a coded
 * ERR_ECDYSIS_HANDOFF, and the new generation keeps none of the fds that came
 * with them (its fd table, read by itself, names none of them).
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { onLines } from '../../examples/lib/lines.ts';
import { encodeHandoffFrame } from '../../src/wire/handoff-channel.ts';
import { native } from '../../src/internal/native.ts';
import { fixtureCommand, repoRoot, type Record_ } from '../helpers/generations.ts';

function frame(body: unknown): Buffer {
  const bytes = Buffer.from(JSON.stringify(body));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(bytes.length);
  return Buffer.concat([header, bytes]);
}

/**
 * test/fixtures/handoff-receiver.ts started as generation 1 of this process: a
 * hello that announces a hand-over, the hand-over channel on fd 4, and frames
 * sent on it as the test says.
 */
function rogueParent(t: ExecutionContext, env: Record<string, string> = {}) {
  const [ours, theirs] = native().socketPair('seqpacket');
  const child = spawn(process.execPath, fixtureCommand('handoff-receiver.ts'), {
    cwd: repoRoot,
    env: { ...process.env, ...env, ECDYSIS_HANDOFF: 'v2,fd=3' },
    stdio: ['ignore', 'pipe', 'inherit', 'pipe', theirs],
  });
  native().close(theirs);
  const channel = new (native().PacketSocket)(ours, 'connected', { onMessage: () => {}, onError: () => {}, onEnd: () => {} });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    channel.close();
  });
  const records: Record_[] = [];
  const waiters: (() => void)[] = [];
  onLines(child.stdout!, (line) => {
    records.push(JSON.parse(line) as Record_);
    for (const wake of waiters.splice(0)) wake();
  });
  const control = child.stdio[3] as Writable;
  control.on('error', () => {});
  control.write(frame({ type: 'hello', protocol: 2, maxProtocol: 4, parentPid: process.pid, generation: 1, sockets: [], upgradeTimeout: 60_000, handoffFd: 4, handoff: true }));
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-rogue-handoff-'));
  const opened: number[] = [];
  t.teardown(() => {
    for (const fd of opened) native().close(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  const record = (type: string, timeoutMs = 30_000) =>
    new Promise<Record_>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no "${type}" record within ${timeoutMs} ms; records: ${JSON.stringify(records)}`)), timeoutMs);
      const look = () => {
        const found = records.find((r) => r.type === type);
        if (found) return (clearTimeout(timer), resolve(found));
        waiters.push(look);
      };
      look();
    });
  let asked = 0;
  return {
    send(header: { t: string } & Record<string, unknown>, payload: Buffer | string = '', fds: number[] = []): void {
      const data = encodeHandoffFrame(header, Buffer.from(payload));
      if (fds.length > 0) channel.sendWithFds(data, fds);
      else channel.send(data);
    },
    /** An open file of its own name: its path in the child's fd table says whether the child still holds it. */
    marker(label: string): { fd: number; path: string } {
      const path = join(dir, label);
      writeFileSync(path, label);
      const fd = openSync(path, 'r');
      opened.push(fd);
      return { fd, path };
    },
    /** One end of a connected pair: its inode names it in the child's fd table. */
    connection(): { fd: number; link: string } {
      const [a, b] = native().socketPair('stream');
      opened.push(a, b);
      return { fd: a, link: `socket:[${native().describe(a).inode}]` };
    },
    record,
    /** The child's fd table, once every frame sent so far has been handled (a channel message comes after them). */
    async fds(): Promise<string[]> {
      const before = records.filter((r) => r.type === 'fds').length;
      this.send({ t: 'message' }, JSON.stringify({ asked: ++asked }));
      await new Promise<void>((resolve) => {
        const look = () => (records.filter((r) => r.type === 'fds').length > before ? resolve() : waiters.push(look));
        look();
      });
      return Object.values(records.filter((r) => r.type === 'fds').at(-1)!.fds as Record<string, string>);
    },
  };
}

test('fds riding on state, socket-data, end and unknown frames are closed; the hand-over itself completes', async (t) => {
  const parent = rogueParent(t);
  const markers = ['state', 'socket-data', 'mystery', 'end'].map((label) => parent.marker(label));
  const moved = parent.connection();
  const state = Buffer.from(JSON.stringify({ a: 1 }));
  parent.send({ t: 'state', encoding: 'json', total: state.length, last: true }, state, [markers[0]!.fd]);
  parent.send({ t: 'socket', key: 's', meta: null, buffered: 6 }, 'abc', [moved.fd]);
  parent.send({ t: 'socket-data', key: 's' }, 'def', [markers[1]!.fd]);
  parent.send({ t: 'mystery' }, '', [markers[2]!.fd]);
  parent.send({ t: 'end', state: true, files: 0, sockets: 1 }, '', [markers[3]!.fd]);
  t.like(await parent.record('inherited'), { state: { a: 1 }, files: [], sockets: ['s'] });
  const fds = await parent.fds();
  for (const { path } of markers) t.false(fds.includes(path), `${path} is still open in the child`);
  t.true(fds.includes(moved.link), 'the connection that was handed over is held');
});

for (const [name, send, message] of [
  [
    'a file key given twice',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'file', key: 'log', type: 'file' }, '', [fds[0]!]);
      p.send({ t: 'file', key: 'log', type: 'file' }, '', [fds[1]!]);
    },
    /the hand-over key "log" arrived twice/,
  ],
  [
    'a socket key given twice',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'socket', key: 's', meta: null, buffered: 0 }, '', [fds[2]!]);
      p.send({ t: 'socket', key: 's', meta: null, buffered: 0 }, '', [fds[3]!]);
    },
    /the hand-over key "s" arrived twice/,
  ],
  [
    'a key given to a file and to a socket',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'file', key: 'k', type: 'file' }, '', [fds[0]!]);
      p.send({ t: 'socket', key: 'k', meta: null, buffered: 0 }, '', [fds[2]!]);
    },
    /the hand-over key "k" arrived twice/,
  ],
  [
    'a socket whose unread bytes are said to be more than maxHandoffBytes',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'file', key: 'log', type: 'file' }, '', [fds[0]!]);
      p.send({ t: 'socket', key: 's', meta: null, buffered: 1_000_000 }, 'abc', [fds[2]!]);
    },
    /socket "s" says it carries 1000000 unread bytes; at most maxHandoffBytes \(1024\) may come/,
  ],
  [
    'a socket whose unread bytes are not a number',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => p.send({ t: 'socket', key: 's', meta: null, buffered: 'lots' }, '', [fds[2]!]),
    /socket "s" says it carries lots unread bytes/,
  ],
  [
    'a socket with more unread bytes than it said',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'socket', key: 's', meta: null, buffered: 4 }, 'ab', [fds[2]!]);
      p.send({ t: 'socket-data', key: 's' }, 'cdef');
    },
    /socket "s" carries more unread bytes than it said/,
  ],
  [
    'an end that counts more than arrived',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'file', key: 'log', type: 'file' }, '', [fds[0]!]);
      p.send({ t: 'socket', key: 's', meta: null, buffered: 0 }, '', [fds[2]!]);
      p.send({ t: 'end', state: false, files: 1, sockets: 2 });
    },
    /the hand-over says 1 file\(s\) and 2 connection\(s\); 1 and 1 arrived/,
  ],
  [
    'an abort (version 8: the sender failed) after a file and a socket',
    (p: ReturnType<typeof rogueParent>, fds: number[]) => {
      p.send({ t: 'file', key: 'log', type: 'file' }, '', [fds[0]!]);
      p.send({ t: 'socket', key: 's', meta: null, buffered: 0 }, '', [fds[2]!]);
      p.send({ t: 'abort', message: 'a handler threw' });
    },
    /the previous generation's hand-over failed: a handler threw/,
  ],
] as const) {
  test(`${name}: ERR_ECDYSIS_HANDOFF at once, and nothing that arrived stays open`, async (t) => {
    const parent = rogueParent(t, { FIXTURE_MAX_HANDOFF: '1024' });
    const files = [parent.marker('first'), parent.marker('second')];
    const sockets = [parent.connection(), parent.connection()];
    send(parent, [files[0]!.fd, files[1]!.fd, sockets[0]!.fd, sockets[1]!.fd]);
    // No end is sent: the error must come from the frame itself.
    const failed = await parent.record('inherited-failed');
    t.is(failed.code, 'ERR_ECDYSIS_HANDOFF');
    t.regex(failed.message as string, message);
    const fds = await parent.fds();
    for (const held of [...files.map((f) => f.path), ...sockets.map((s) => s.link)]) t.false(fds.includes(held), `${held} is still open in the child`);
  });
}

test('frames after the end are not taken: their fds are closed, the application\'s hand-over does not change', async (t) => {
  const parent = rogueParent(t);
  const late = parent.marker('late');
  const moved = parent.connection();
  parent.send({ t: 'end', state: false, files: 0, sockets: 0 });
  t.like(await parent.record('inherited'), { files: [], sockets: [] });
  parent.send({ t: 'file', key: 'late', type: 'file' }, '', [late.fd]);
  parent.send({ t: 'socket', key: 'late', meta: null, buffered: 0 }, '', [moved.fd]);
  const fds = await parent.fds();
  t.false(fds.includes(late.path));
  t.false(fds.includes(moved.link));
});

