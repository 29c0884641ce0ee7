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
): Promise<Outcome> {
  const stdio: StdioOptions = ['ignore', 'pipe', 'pipe', stdio3, ...extraFds];
  const child = spawn(process.execPath, fixtureCommand('line-service.ts'), {
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
  ['an unknown protocol version in the environment', 'v99,fd=3', 'pipe', undefined, 'ERR_ECDYSIS_PROTOCOL_VERSION', /version 99.*versions 1 to 3/],
  ['a truncated hello', 'v1,fd=3', 'pipe', (c) => c.end(frame(validHello).subarray(0, 20)), 'ERR_ECDYSIS_PROTOCOL', /truncated hello.*after 20 bytes/],
  ['an oversized hello', 'v1,fd=3', 'pipe', (c) => c.write(Buffer.from([0xff, 0xff, 0xff, 0xf0])), 'ERR_ECDYSIS_PROTOCOL', /limit/],
  ['a hello that is not JSON', 'v1,fd=3', 'pipe', (c) => c.write(frame('{{{')), 'ERR_ECDYSIS_PROTOCOL', /not valid JSON/],
  ['a hello of an unknown version', 'v1,fd=3', 'pipe', (c) => c.write(frame({ ...validHello, protocol: 7 })), 'ERR_ECDYSIS_PROTOCOL_VERSION', /version 7/],
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
  t.regex(failedWith(outcome)?.message as string, /inherited fd 4.*not a listening tcp stream socket/);
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
