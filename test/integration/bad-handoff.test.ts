/**
 * Bad input across the generation boundary, in both directions: a child given a
 * garbage environment, a closed or wrong fd, a truncated, oversized or
 * wrong-version hello; a parent whose child speaks nonsense. Each must end in a
 * clear coded error, promptly, and the old generation keeps serving.
 */
import test from 'ava';
import { spawn, type StdioOptions } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fixtureCommand, fixturesDir, repoRoot, startGenerations } from '../helpers/generations.ts';
import { lineRequest } from '../helpers/line-client.ts';

interface Outcome {
  records: Record<string, unknown>[];
  code: number | null;
  stderr: string;
  /** Bytes the child wrote back on the control channel. */
  control: Buffer;
}

function frame(body: unknown): Buffer {
  const bytes = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(bytes.length);
  return Buffer.concat([header, bytes]);
}

/** Start the fixture as if it were generation 1, with a hand-made environment and fds. */
function startAsChild(
  t: import('ava').ExecutionContext,
  handoff: string,
  stdio3: 'pipe' | 'ignore' | number,
  feed?: (control: Writable) => void,
  extraFds: number[] = [],
  fixture = 'line-service.ts',
): Promise<Outcome> {
  const stdio: StdioOptions = ['ignore', 'pipe', 'pipe', stdio3, ...extraFds];
  const child = spawn(process.execPath, fixtureCommand(fixture), {
    cwd: repoRoot,
    env: { ...process.env, ECDYSIS_HANDOFF: handoff },
    stdio,
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let out = '';
  let stderr = '';
  const control: Buffer[] = [];
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const channel = child.stdio[3] as (Readable & Writable) | null;
  if (channel) {
    channel.on('data', (c: Buffer) => control.push(c));
    channel.on('error', () => {});
    feed?.(channel);
  }
  return new Promise((resolve) => {
    child.on('close', (code) => {
      const records = out
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      resolve({ records, code, stderr, control: Buffer.concat(control) });
    });
  });
}

const failedWith = (outcome: Outcome) => outcome.records.find((r) => r.type === 'create-failed');

const validHello = { type: 'hello', protocol: 1, parentPid: process.pid, generation: 1, sockets: [] };

const cases: [string, string, 'pipe' | 'ignore' | 'file', ((c: Writable) => void) | undefined, string, RegExp][] = [
  ['garbage in the environment variable', 'yes please', 'pipe', undefined, 'ERR_ECDYSIS_BAD_ENVIRONMENT', /not of the form/],
  ['a closed control fd', 'v1,fd=999', 'pipe', undefined, 'ERR_ECDYSIS_BAD_ENVIRONMENT', /control fd 999.*EBADF/],
  ['a control fd that is /dev/null', 'v1,fd=3', 'ignore', undefined, 'ERR_ECDYSIS_BAD_ENVIRONMENT', /control fd 3, which is not a Unix stream socket/],
  ['a control fd that is a regular file', 'v1,fd=3', 'file', undefined, 'ERR_ECDYSIS_BAD_ENVIRONMENT', /not a Unix stream socket/],
  ['an unknown protocol version in the environment', 'v99,fd=3', 'pipe', undefined, 'ERR_ECDYSIS_PROTOCOL_VERSION', /version 99.*versions 1 to 8/],
  ['a truncated hello', 'v1,fd=3', 'pipe', (c) => c.end(frame(validHello).subarray(0, 20)), 'ERR_ECDYSIS_PROTOCOL', /truncated hello.*after 20 bytes/],
  ['an oversized hello', 'v1,fd=3', 'pipe', (c) => c.write(Buffer.from([0xff, 0xff, 0xff, 0xf0])), 'ERR_ECDYSIS_PROTOCOL', /limit/],
  ['a hello that is not JSON', 'v1,fd=3', 'pipe', (c) => c.write(frame('{{{')), 'ERR_ECDYSIS_PROTOCOL', /not valid JSON/],
  ['a hello of an unknown version', 'v1,fd=3', 'pipe', (c) => c.write(frame({ ...validHello, protocol: 9 })), 'ERR_ECDYSIS_PROTOCOL_VERSION', /version 9/],
  ['a hello with a malformed socket table', 'v1,fd=3', 'pipe', (c) => c.write(frame({ ...validHello, sockets: [{ key: 'x', kind: 7, fd: 4 }] })), 'ERR_ECDYSIS_PROTOCOL', /kind/],
  ['a control channel closed before hello', 'v1,fd=3', 'pipe', (c) => c.end(), 'ERR_ECDYSIS_PROTOCOL', /closed before the parent sent hello/],
];

for (const [name, handoff, kind, feed, code, message] of cases) {
  test(`a child given ${name} fails with ${code}`, async (t) => {
    let fileFd: number | undefined;
    if (kind === 'file') {
      const path = join(mkdtempSync(join(tmpdir(), 'ecdysis-test-')), 'not-a-socket');
      writeFileSync(path, 'hello');
      fileFd = openSync(path, 'r');
    }
    const outcome = await startAsChild(t, handoff, fileFd ?? (kind as 'pipe' | 'ignore'), feed);
    if (fileFd !== undefined) closeSync(fileFd);
    const failure = failedWith(outcome);
    t.truthy(failure, `stdout: ${JSON.stringify(outcome.records)} stderr: ${outcome.stderr}`);
    t.is(failure!.code, code);
    t.regex(failure!.message as string, message);
    t.is(outcome.code, 9, 'the application decided how to exit; the library never exits');
    t.notRegex(outcome.stderr, /at .*\(.*\)/, 'no stack trace');
  });
}

test('a child whose inherited fd is not the socket the hello describes reports the error to its parent', async (t) => {
  const path = join(mkdtempSync(join(tmpdir(), 'ecdysis-test-')), 'not-a-socket');
  writeFileSync(path, 'x');
  const fileFd = openSync(path, 'r');
  const hello = { ...validHello, sockets: [{ key: 'tcp:127.0.0.1:0', kind: 'tcp', fd: 4, host: '127.0.0.1', port: 1 }] };
  const outcome = await startAsChild(t, 'v1,fd=3', 'pipe', (c) => c.write(frame(hello)), [fileFd]);
  closeSync(fileFd);
  t.is(failedWith(outcome)?.code, 'ERR_ECDYSIS_BAD_ENVIRONMENT');
  t.regex(failedWith(outcome)?.message as string, /inherited fd 4.*is not a listening tcp socket \(found a non-socket\)/);
  const body = outcome.control.subarray(4).toString('utf8');
  t.like(JSON.parse(body), { type: 'error', protocol: 1, code: 'ERR_ECDYSIS_BAD_ENVIRONMENT' });
});

for (const [mode, code] of [
  ['version', 'ERR_ECDYSIS_PROTOCOL_VERSION'],
  ['garbage', 'ERR_ECDYSIS_PROTOCOL'],
  ['oversize', 'ERR_ECDYSIS_PROTOCOL'],
  ['unknown-type', 'ERR_ECDYSIS_PROTOCOL'],
  ['close', 'ERR_ECDYSIS_PROTOCOL'],
] as const) {
  test(`a parent whose child speaks nonsense (${mode}) fails the upgrade with ${code} and keeps serving`, async (t) => {
    const g = startGenerations(t, 'line-service.ts', {
      FIXTURE_NEXT_COMMAND: JSON.stringify({ file: process.execPath, args: [`${fixturesDir}rogue-child.mjs`, mode] }),
    });
    const first = await g.ready(0);
    t.is(await lineRequest({ port: first.port as number }, 'upgrade', 15_000), `error ${code}`);
    const failed = await g.event(0, 'child-failed');
    t.is(failed.code, code);
    t.is(await lineRequest({ port: first.port as number }, 'ping'), `pong 0 ${first.pid}`);
  });
}

test('a newer child understands a version-1 parent: it answers in version 1 and accepts without a commit', async (t) => {
  const { native } = await import('../../src/internal/native.ts');
  const fd = native().listenTcp('127.0.0.1', 0, 64, { reuseAddr: true, reusePort: false, ipv6Only: false });
  t.teardown(() => native().close(fd));
  const port = native().describe(fd).port!;
  const helloV1 = { ...validHello, protocol: 1, sockets: [{ key: 'tcp:127.0.0.1:0', kind: 'tcp', fd: 4, host: '127.0.0.1', port }] };
  let control: Writable | undefined;
  const outcome = startAsChild(t, 'v1,fd=3', 'pipe', (c) => {
    control = c;
    c.write(frame(helloV1));
  }, [fd]);
  // The child serves on the inherited socket, though no commit was ever sent.
  const { lineRequest } = await import('../helpers/line-client.ts');
  let answer = '';
  for (let i = 0; i < 200 && answer === ''; i++) {
    answer = await lineRequest({ port }, 'ping', 2_000).catch(() => '');
    if (answer === '') await new Promise((r) => setTimeout(r, 100));
  }
  t.regex(answer, /^pong 1 \d+$/);
  control!.end(); // the "parent" exits
  const pid = Number(answer.split(' ')[2]);
  process.kill(pid, 'SIGTERM');
  const result = await outcome;
  const ready = JSON.parse(result.control.subarray(4).toString('utf8')) as Record<string, unknown>;
  t.like(ready, { type: 'ready', protocol: 1 });
});

test('a parent of the released protocol version 2 (environment and hello in version 2, no maxProtocol): this child answers in version 2, waits for commit, serves; inherited() is empty', async (t) => {
  const { native } = await import('../../src/internal/native.ts');
  const fd = native().listenTcp('127.0.0.1', 0, 64, { reuseAddr: true, reusePort: false, ipv6Only: false });
  t.teardown(() => native().close(fd));
  const port = native().describe(fd).port!;
  const helloV2 = { ...validHello, protocol: 2, sockets: [{ key: 'tcp:127.0.0.1:0', kind: 'tcp', fd: 4, host: '127.0.0.1', port }] };
  let control: Writable | undefined;
  let answered = '';
  const outcome = startAsChild(t, 'v2,fd=3', 'pipe', (c) => {
    control = c;
    c.on('data', (chunk: Buffer) => {
      answered += chunk.subarray(4).toString('utf8');
      if (answered.includes('"ready"')) c.write(frame({ type: 'commit', protocol: 2 }));
    });
    c.write(frame(helloV2));
  }, [fd], 'handoff-service.ts');
  const { lineRequest } = await import('../helpers/line-client.ts');
  const answer = await lineRequest({ port }, 'a 1', 30_000);
  t.is(answer, 'a 1 1 1', 'served by generation 1, its counter starting afresh');
  t.like(JSON.parse(answered), { type: 'ready', protocol: 2 });
  t.false(answered.includes('accepted'), 'no hand-over frames in version 2');
  control!.end(); // the "parent" exits
  const pid = Number(JSON.parse(answered).pid);
  process.kill(pid, 'SIGTERM');
  const result = await outcome;
  t.like(result.records.find((r) => r.type === 'inherited'), { state: null, sockets: 0, files: 0 });
});

test('a hello that lists fds that were never passed: a coded error, and no fd this process owns is closed (no abort)', async (t) => {
  // fds 4.. are not passed: in the child they are Node's and libuv's own (epoll, signal pipes...).
  const sockets = Array.from({ length: 16 }, (_, i) => ({ key: `tcp:127.0.0.1:${i}`, kind: 'tcp', fd: 4 + i, host: '127.0.0.1', port: 1000 + i }));
  const outcome = await startAsChild(t, 'v1,fd=3', 'pipe', (c) => c.write(frame({ ...validHello, sockets })));
  t.is(failedWith(outcome)?.code, 'ERR_ECDYSIS_BAD_ENVIRONMENT');
  t.is(outcome.code, 9, `the application's exit code, not an abort: ${outcome.stderr.slice(-500)}`);
  t.notRegex(outcome.stderr, /Assertion|abort|core dumped/i);
});

test('a child whose inherited socket is bound elsewhere than the hello says fails with ERR_ECDYSIS_BAD_ENVIRONMENT', async (t) => {
  const { native } = await import('../../src/internal/native.ts');
  const fd = native().listenTcp('127.0.0.1', 0, 64, { reuseAddr: true, reusePort: false, ipv6Only: false });
  t.teardown(() => native().close(fd));
  const port = native().describe(fd).port!;
  const hello = { ...validHello, sockets: [{ key: 'tcp:127.0.0.1:0', kind: 'tcp', fd: 4, host: '127.0.0.1', port: port === 65535 ? 1 : port + 1 }] };
  const outcome = await startAsChild(t, 'v1,fd=3', 'pipe', (c) => c.write(frame(hello)), [fd]);
  t.is(failedWith(outcome)?.code, 'ERR_ECDYSIS_BAD_ENVIRONMENT');
  t.regex(failedWith(outcome)?.message as string, new RegExp(`bound to "127.0.0.1:${port}", not "127.0.0.1:${port + 1}"`));
});

/** A socket the test holds, listed in a hello as the fixture's listener. */
async function heldListener(t: import('ava').ExecutionContext) {
  const { native } = await import('../../src/internal/native.ts');
  const fd = native().listenTcp('127.0.0.1', 0, 64, { reuseAddr: true, reusePort: false, ipv6Only: false });
  t.teardown(() => native().close(fd));
  const port = native().describe(fd).port!;
  return { fd, port, entry: { key: 'tcp:127.0.0.1:0', kind: 'tcp', fd: 4, host: '127.0.0.1', port } };
}

test('frames that arrive in the same read as hello are kept: a commit sent with it is honoured', async (t) => {
  const { fd, port, entry } = await heldListener(t);
  const hello = { ...validHello, protocol: 3, upgradeTimeout: 60_000, sockets: [entry] };
  let control: Writable | undefined;
  const outcome = startAsChild(t, 'v3,fd=3', 'pipe', (c) => {
    control = c;
    c.write(Buffer.concat([frame(hello), frame({ type: 'commit', protocol: 3 })]));
  }, [fd]);
  const answer = await lineRequest({ port }, 'ping', 30_000);
  t.regex(answer, /^pong 1 \d+$/);
  control!.end();
  process.kill(Number(answer.split(' ')[2]), 'SIGTERM');
  await outcome;
});

test('a parent that neither commits nor exits: the child gives up after the upgrade timeout the hello names, leaving the socket alone', async (t) => {
  const { fd, port, entry } = await heldListener(t);
  const hello = { ...validHello, protocol: 3, upgradeTimeout: 1_500, sockets: [entry] };
  let control: Writable | undefined;
  const outcome = await startAsChild(t, 'v3,fd=3', 'pipe', (c) => {
    control = c;
    c.write(frame(hello)); // and then nothing: a stopped or hung parent
  }, [fd]);
  control?.destroy();
  const failure = outcome.records.find((r) => r.type === 'ready-failed');
  t.is(failure?.code, 'ERR_ECDYSIS_COMMIT_TIMEOUT', JSON.stringify(outcome.records));
  t.regex(failure?.message as string, /neither committed .* within 1500 ms/);
  t.like(outcome.records.find((r) => r.type === 'exiting'), { mode: 'stop', reason: 'commit timeout' });
  const { native } = await import('../../src/internal/native.ts');
  t.like(native().describe(fd), { listening: true, port }, 'the socket is still listening, as the parent left it');
});

test('a hello entry of a kind this version does not know is closed and skipped; the child serves', async (t) => {
  const { fd, port, entry } = await heldListener(t);
  const { native } = await import('../../src/internal/native.ts');
  const stranger = native().listenTcp('127.0.0.1', 0, 8, { reuseAddr: true, reusePort: false, ipv6Only: false });
  t.teardown(() => native().close(stranger));
  const strangerInode = native().describe(stranger).inode;
  const hello = { ...validHello, protocol: 3, upgradeTimeout: 60_000, sockets: [entry, { key: 'quic:x', kind: 'quic', fd: 5, anything: 1 }] };
  let control: Writable | undefined;
  const outcome = startAsChild(t, 'v3,fd=3', 'pipe', (c) => {
    control = c;
    c.write(Buffer.concat([frame(hello), frame({ type: 'commit', protocol: 3 })]));
  }, [fd, stranger]);
  const answer = await lineRequest({ port }, 'ping', 30_000);
  t.regex(answer, /^pong 1 \d+$/);
  const fds = JSON.parse((await lineRequest({ port }, 'fds', 30_000)).slice(4)) as Record<string, string>;
  t.false(Object.values(fds).includes(`socket:[${strangerInode}]`), 'the unknown socket was closed in the child');
  control!.end();
  process.kill(Number(answer.split(' ')[2]), 'SIGTERM');
  await outcome;
});

for (const [name, make, entry, message] of [
  [
    'a TCP socket behind a UDP key',
    'tcp',
    (fd: number, port: number) => ({ key: 'udp:127.0.0.1:0', kind: 'udp', fd, host: '127.0.0.1', port }),
    /is not a bound udp socket \(found inet stream, listening\)/,
  ],
  [
    'a Unix stream socket where seqpacket is expected',
    'unix-stream',
    (fd: number, _port: number, path: string) => ({ key: `unix-seqpacket:${path}`, kind: 'unix-seqpacket', fd, path }),
    /is not a listening unix-seqpacket socket \(found unix stream, listening\)/,
  ],
] as const) {
  test(`a child given ${name} fails with ERR_ECDYSIS_BAD_ENVIRONMENT, never a crash`, async (t) => {
    const { native } = await import('../../src/internal/native.ts');
    const path = join(mkdtempSync(join(tmpdir(), 'ecdysis-test-')), 's.sock');
    const fd = make === 'tcp' ? native().listenTcp('127.0.0.1', 0, 8, { reuseAddr: true }) : native().listenUnix(path, 8, 'stream');
    t.teardown(() => native().close(fd));
    const port = native().describe(fd).port ?? 0;
    const hello = { ...validHello, protocol: 3, upgradeTimeout: 60_000, sockets: [entry(4, port, path)] };
    const outcome = await startAsChild(t, 'v3,fd=3', 'pipe', (c) => c.write(frame(hello)), [fd]);
    t.is(failedWith(outcome)?.code, 'ERR_ECDYSIS_BAD_ENVIRONMENT');
    t.regex(failedWith(outcome)?.message as string, message);
    t.is(outcome.code, 9);
  });
}
