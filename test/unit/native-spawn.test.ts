/**
 * Starting a child without fork (child-start.ts, the addon's spawnProcess and
 * ProcessWatch): the fds the child gets and nothing else, its working
 * directory, signals at their defaults, its exit code or signal, reaped (no
 * zombie), and each way it can fail to start: a coded system error, no fd left
 * behind in this process.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, open, openSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { native } from '../../src/internal/native.ts';
import { NativeChild, nativeStartFits, startChild, type StartedChild } from '../../src/generation/child-start.ts';
import { jsonLines, openFds, socketDir, throwsLike } from '../helpers/native.ts';
import { childrenOf, fixtureCommand, waitUntil, zombieChildren } from '../helpers/generations.ts';
import { spawnSuccessor } from '../../src/generation/successor.ts';
import { runCommand } from '../helpers/run.ts';

const features = native().spawnFeatures();
// Serial: fd tables are compared before and after.
const nativeTest = features.pidfd && features.chdir ? test.serial : test.serial.skip;

/** Everything the child writes on its fd 3, once it closes it. */
function readAll(control: Socket | null): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    control!.setEncoding('utf8');
    control!.on('data', (chunk: string) => (text += chunk));
    control!.on('end', () => resolve(text));
    control!.on('error', reject);
  });
}

function exited(started: StartedChild): Promise<[number | null, NodeJS.Signals | null]> {
  return new Promise((resolve) => started.child.once('exit', (code, signal) => resolve([code, signal])));
}

/** This process's fds, but tsx's cache directory (its loader opens and closes it when it likes). */
function ownFds(): Map<number, string> {
  return new Map([...openFds()].filter(([, target]) => !target.startsWith('/tmp/tsx-')));
}

/** Whether the pid is gone from /proc (a zombie still shows there, in state Z). */
function reaped(pid: number): boolean {
  return !existsSync(`/proc/${pid}`) || !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'));
}

const sh = (script: string, fds: number[] = [], cwd = process.cwd()) =>
  startChild({ file: '/bin/sh', args: ['-c', script], cwd, env: { PATH: process.env.PATH, MARK: 'seen' }, fds });

nativeTest('the native start is the one used here, and gives the child fds 0-2, the control socket at 3, the given fds from 4 on, nothing else', async (t) => {
  t.true(nativeStartFits({ file: '/bin/sh', cwd: '/' }));
  t.false(nativeStartFits({ file: 'sh', cwd: process.cwd() }), 'a PATH search is left to child_process');
  const pair = native().socketPair('seqpacket');
  const listener = native().listenTcp('127.0.0.1', 0, 8, {});
  t.teardown(() => [...pair, listener].forEach((fd) => native().close(fd)));
  const before = ownFds();
  // What this process holds close-on-exec (anything else it would pass on to any child, as child_process does).
  const ours = new Set([...before].filter(([fd, target]) => !target.startsWith('anon_inode:') && native().describe(fd).cloexec).map(([, target]) => target));
  const started = sh('exec ls -l /proc/self/fd >&3', [pair[1], listener]);
  t.true(started.child instanceof NativeChild);
  const ended = exited(started);
  const listing = await readAll(started.control);
  t.deepEqual(await ended, [0, null]);
  const fds = new Map(
    listing
      .split('\n')
      .map((line) => /(\d+) -> (.*)$/.exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [Number(m[1]), m[2]!]),
  );
  t.is(fds.get(4), before.get(pair[1]));
  t.is(fds.get(5), before.get(listener));
  t.regex(fds.get(3)!, /^socket:/);
  t.false(ours.has(fds.get(3)!), 'fd 3 is the child end of a new socketpair');
  for (const [fd, target] of fds) {
    if (fd <= 5) continue;
    // ls's own directory fd is the only other one.
    t.false(ours.has(target) && fd !== 3, `fd ${fd} (${target}) leaked into the child`);
  }
  t.true(reaped(started.child.pid!));
  started.control!.destroy();
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(ownFds(), before, 'nothing left open in this process');
});

nativeTest('the child gets the environment given, the working directory, no blocked or ignored signal', async (t) => {
  const dir = realpathSync(socketDir(t));
  const started = sh('echo "$MARK $(pwd)" >&3; exec grep -E "^Sig(Blk|Ign)" /proc/self/status >&3', [], dir);
  const ended = exited(started);
  const text = await readAll(started.control);
  await ended;
  const [first, ...signals] = text.trim().split('\n');
  t.is(first, `seen ${dir}`);
  // Node itself ignores SIGPIPE: the child must not inherit that.
  // Signals 1-31, as libuv resets them (32 and 33 are glibc's own, left as they are).
  t.is(signals[0], 'SigBlk:\t0000000000000000');
  t.is(Number(BigInt(`0x${signals[1]!.split('\t')[1]}`) & 0x7fffffffn), 0, signals[1]);
});

nativeTest('exit code, then signal; kill() after the exit sends nothing; each child reaped', async (t) => {
  const quits = sh('exit 7');
  t.deepEqual(await exited(quits), [7, null]);
  t.is(quits.child.exitCode, 7);
  t.true(reaped(quits.child.pid!));
  t.false(quits.child.kill('SIGKILL'));
  quits.control!.destroy();

  const sleeps = sh('exec sleep 600');
  const ended = exited(sleeps);
  t.true(sleeps.child.kill('SIGKILL'));
  t.deepEqual(await ended, [null, 'SIGKILL']);
  t.is(sleeps.child.signalCode, 'SIGKILL');
  t.true(reaped(sleeps.child.pid!));
  sleeps.control!.destroy();

  const terminated = sh('kill -TERM $$; sleep 600');
  t.deepEqual(await exited(terminated), [null, 'SIGTERM']);
  terminated.control!.destroy();
});

/** A few turns of the event loop: the pidfd of a child of a test before is closed just after its 'exit'. */
async function pidfdsClosed(): Promise<void> {
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
}

/** The error a start that could not begin ends with ('error', from the addon's thread), its control socket closed. */
function startError(started: StartedChild): Promise<NodeJS.ErrnoException> {
  return new Promise((resolve) => {
    started.child.on('error', (err) => {
      started.control!.destroy();
      resolve(err as NodeJS.ErrnoException);
    });
  });
}

nativeTest('a child that cannot start: a missing program, a bad directory, a file not executable: coded errors, no fd left open', async (t) => {
  const dir = socketDir(t);
  const listener = native().listenTcp('127.0.0.1', 0, 8, {});
  t.teardown(() => native().close(listener));
  await pidfdsClosed();
  const before = ownFds();
  const start = (file: string, cwd = process.cwd()) => startError(startChild({ file, args: [], cwd, env: {}, fds: [listener] }));
  t.like(await start('/nonexistent/program'), { code: 'ENOENT', syscall: 'posix_spawn' });
  t.like(await start('/bin/sh', `${dir}/missing`), { code: 'ENOENT', syscall: 'posix_spawn' });
  const notExecutable = join(dir, 'data');
  writeFileSync(notExecutable, 'data', { mode: 0o644 });
  t.like(await start(notExecutable), { code: 'EACCES', syscall: 'posix_spawn' });
  const noFormat = join(dir, 'garbage');
  writeFileSync(noFormat, '\x7fELF garbage', { mode: 0o755 });
  t.like(await start(noFormat), { code: 'ENOEXEC', syscall: 'posix_spawn' });
  t.like(await start('/bin/sh', '/etc/hostname'), { code: 'ENOTDIR', syscall: 'posix_spawn' });
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(ownFds(), before);
  // The same errors from the call that waits for the exec.
  throwsLike(t, () => native().spawnProcess('/nonexistent/program', ['x'], [], null, [listener]), { code: 'ENOENT', syscall: 'posix_spawn' });
  // Arguments are checked before either returns.
  const spawnAsync = native().spawnProcessAsync!;
  const never = () => t.fail('no callback for a call that threw');
  t.throws(() => native().spawnProcess('/bin/sh', [], [], null, []), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => native().spawnProcess('/bin/sh', ['sh'], [], null, [1.5]), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => native().spawnProcess('/bin/sh', ['sh'], ['A=\0'], null, []), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => spawnAsync('/bin/sh', [], [], null, [], never), { code: 'ERR_INVALID_ARG_VALUE' });
  t.throws(() => spawnAsync('/bin/sh', ['sh'], [], null, [1.5], never), { code: 'ERR_INVALID_ARG_TYPE' });
  t.throws(() => (spawnAsync as unknown as (...args: unknown[]) => void)('/bin/sh', ['sh'], [], null, []), { code: 'ERR_INVALID_ARG_TYPE' });
  t.deepEqual(ownFds(), before);
});

nativeTest('the start runs on a thread of the addon: the call returns before the child has a pid, the fds given may be closed at once, a kill asked for meanwhile is sent as soon as it has one', async (t) => {
  await pidfdsClosed();
  const pair = native().socketPair('seqpacket');
  const before = ownFds();
  const started = sh('readlink /proc/self/fd/4 >&3; exec sleep 600', [pair[1]]);
  t.true(started.child.spawning);
  t.is(started.child.pid, undefined);
  // The caller's own copies: the child still gets the socket.
  const expected = before.get(pair[1])!;
  pair.forEach((fd) => native().close(fd));
  const text = await new Promise<string>((resolve) => started.control!.once('data', (chunk: Buffer) => resolve(chunk.toString())));
  t.is(text.trim(), expected);
  t.false(started.child.spawning);
  t.is(typeof started.child.pid, 'number');

  const killed = sh('exec sleep 600');
  const ended = exited(killed);
  t.true(killed.child.kill('SIGTERM'));
  t.true(killed.child.kill('SIGKILL'));
  t.true(killed.child.kill('SIGTERM'), 'SIGKILL stays the one sent');
  t.deepEqual(await ended, [null, 'SIGKILL']);
  t.true(reaped(killed.child.pid!));
  killed.control!.destroy();

  const first = exited(started);
  started.child.kill('SIGKILL');
  await first;
  started.control!.destroy();
  await new Promise((resolve) => setImmediate(resolve));
  const now = ownFds();
  before.delete(pair[0]);
  before.delete(pair[1]);
  t.deepEqual(now, before, 'nothing left open in this process');
});

nativeTest('a start that waits for a thread of libuv\'s pool the application holds still fails in time (ERR_ECDYSIS_CHILD_TIMEOUT), and its child, once it comes, is killed and reaped', async (t) => {
  const dir = socketDir(t);
  const marker = join(dir, 'ran');
  // Every thread of the pool (and more) blocked in open() of a FIFO with no writer yet, as a hung
  // network file system or a slow DNS lookup would hold them.
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4) + 2;
  // This process's own (tsx's esbuild service).
  const others = new Set(childrenOf([process.pid]));
  const fifos = Array.from({ length: threads }, (_, i) => join(dir, `fifo-${i}`));
  for (const fifo of fifos) execFileSync('mkfifo', [fifo]);
  const opened = fifos.map((fifo) => new Promise<number>((resolve, reject) => open(fifo, 'r', (err, fd) => (err ? reject(err) : resolve(fd)))));
  const pending = spawnSuccessor({
    command: { file: process.execPath, args: ['-e', `require('fs').writeFileSync(${JSON.stringify(marker)}, '')`], cwd: process.cwd(), env: {} },
    generation: 1,
    fds: [],
    sockets: [],
    timeoutMs: 500,
    handoff: false,
    commit: () => undefined,
  });
  const outcome = await Promise.race([
    pending.ready.then(() => 'ready', (err: { code?: string; message: string }) => `${err.code}: ${err.message}`),
    new Promise<string>((resolve) => setTimeout(() => resolve('still pending after 20 s'), 20_000).unref()),
  ]);
  t.regex(outcome, /^ERR_ECDYSIS_CHILD_TIMEOUT: generation 1 was not started within 500 ms/);
  t.is(await pending.spawned, undefined);
  // The pool is free again: the start runs, and its child is killed at once.
  for (const fifo of fifos) closeSync(openSync(fifo, 'w'));
  for (const fd of await Promise.all(opened)) closeSync(fd);
  await waitUntil(() => childrenOf([process.pid]).every((pid) => others.has(pid)) && zombieChildren(process.pid).length === 0, 30_000, 'no child of this process left, running or zombie');
  t.false(existsSync(marker), 'the child never ran its code');
});

nativeTest('an addon without spawnProcessAsync (a prebuild older than it): the start waits for the exec, as before', async (t) => {
  const addon = native() as { spawnProcessAsync?: unknown };
  const saved = addon.spawnProcessAsync;
  delete addon.spawnProcessAsync;
  t.teardown(() => (addon.spawnProcessAsync = saved));
  const started = sh('exit 4');
  t.false(started.child.spawning);
  t.is(typeof started.child.pid, 'number');
  t.deepEqual(await exited(started), [4, null]);
  started.control!.destroy();
  t.throws(() => startChild({ file: '/nonexistent/program', args: [], cwd: process.cwd(), env: {}, fds: [] }), { code: 'ENOENT' });
});

test.serial('ECDYSIS_SPAWN=node, or a command found on PATH: child_process starts the child, with the same layout', async (t) => {
  const saved = process.env.ECDYSIS_SPAWN;
  process.env.ECDYSIS_SPAWN = 'node';
  t.teardown(() => (saved === undefined ? delete process.env.ECDYSIS_SPAWN : (process.env.ECDYSIS_SPAWN = saved)));
  t.false(nativeStartFits({ file: '/bin/sh', cwd: process.cwd() }));
  const pair = native().socketPair('seqpacket');
  t.teardown(() => pair.forEach((fd) => native().close(fd)));
  const started = startChild({ file: 'sh', args: ['-c', 'readlink /proc/self/fd/4 >&3; exit 3'], cwd: process.cwd(), env: { PATH: process.env.PATH }, fds: [pair[1]] });
  t.false(started.child instanceof NativeChild);
  const ended = exited(started);
  const text = await readAll(started.control);
  t.deepEqual(await ended, [3, null]);
  t.is(text.trim(), ownFds().get(pair[1])!);
});

test.serial("generation 0's warm-up of a successor's start (warmSuccessorStart): every fd it opened is closed when it returns, with no turn of the event loop, and nothing it did is left listening", async (t) => {
  // In a process of its own: here tsx's loader thread and ava open files and sockets when they like.
  // Node itself may still read NODE_EXTRA_CA_CERTS off the main thread as it starts (seen on Node 22).
  const { NODE_EXTRA_CA_CERTS: _certs, ...env } = process.env;
  const result = await runCommand(process.execPath, fixtureCommand('warm-up.ts'), { env, timeoutMs: 60_000 });
  t.is(result.code, 0, result.stderr);
  type Table = Record<string, string>;
  const [record] = jsonLines(result.stdout) as [{ before: Table; sync: Table; after: Table; turns: number; pipesBefore: number; resourcesAfter: string[] }];
  // What the warm-up opens is a socketpair: the sockets are what must be the same (other files
  // come and go with Node's own threads).
  const sockets = (table: Table) => Object.fromEntries(Object.entries(table).filter(([, target]) => target.startsWith('socket:')));
  t.deepEqual(sockets(record.sync), sockets(record.before), 'the same sockets, read synchronously after three warm-ups');
  t.true(record.turns < 200, `its Socket handles closed within 200 turns of the loop: ${record.resourcesAfter.join(', ')}`);
  t.is(record.resourcesAfter.filter((name) => name === 'PipeWrap').length, record.pipesBefore, 'no handle of its left');
  t.deepEqual(sockets(record.after), sockets(record.before), 'the same sockets once they closed');
});
