/**
 * Attacks on a running service from another local user (uid 65534 through
 * setpriv), as the security review made them: what a peer sends must never make
 * the service hold what it did not ask for, and nothing is done by name to a
 * path another user can swap.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, lstatSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ecdysis } from '../../src/index.ts';
import { native, type PacketSocket } from '../../src/internal/native.ts';
import { onLines } from '../../examples/lib/lines.ts';
import { fixtureCommand, startGenerations, upgradeBySignal } from '../helpers/generations.ts';
import { Recorder } from '../helpers/native.ts';

const AS_NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

/** A temporary directory another uid can reach (mode `mode`), removed at teardown. */
function sharedDir(t: ExecutionContext, mode = 0o755): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-hostile-'));
  chmodSync(dir, mode);
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The hostile peer fixture as uid 65534; its JSON lines, and a way to end it (closing its stdin). */
function hostile(t: ExecutionContext, args: string[]): { child: ChildProcess; next: (type: string) => Promise<Record<string, unknown>>; stderr: () => string } {
  const [command, ...rest] = [...AS_NOBODY, process.execPath, ...fixtureCommand('hostile-peer.ts'), ...args];
  const child = spawn(command!, rest, { stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const records: Record<string, unknown>[] = [];
  const waiters = new Set<() => void>();
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  onLines(child.stdout!, (line) => {
    records.push(JSON.parse(line) as Record<string, unknown>);
    for (const wake of [...waiters]) wake();
  });
  child.on('exit', () => {
    for (const wake of [...waiters]) wake();
  });
  const next = (type: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const check = () => {
        const found = records.find((r) => r.type === type);
        if (found) {
          waiters.delete(check);
          resolve(found);
        } else if (child.exitCode !== null || child.signalCode !== null) {
          waiters.delete(check);
          reject(new Error(`the hostile peer exited (${child.exitCode ?? child.signalCode}) before "${type}": ${stderr}`));
        }
      };
      waiters.add(check);
      check();
    });
  return { child, next, stderr: () => stderr };
}

const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

/** One message on a new seqpacket connection; resolves with the answer. */
async function askSeqpacket(path: string, message: string): Promise<string> {
  const recorder = new Recorder();
  const socket: PacketSocket = new (native().PacketSocket)(native().connectUnix(path, 'seqpacket'), 'connected', recorder);
  try {
    socket.startReading();
    socket.send(Buffer.from(message));
    await recorder.until(() => recorder.messages.length > 0, 'an answer');
    return recorder.messages[0]!.data.toString();
  } finally {
    socket.close();
  }
}

test('SEQ-FDLEAK: fds another uid passes with its messages to a seqpacket service are never held; the service answers each message and still upgrades', async (t) => {
  const dir = sharedDir(t);
  const path = join(dir, 'seq.sock');
  const g = startGenerations(t, 'kinds-service.ts', { FIXTURE_SEQ: path, FIXTURE_UNIX_MODE: '666' });
  const first = await g.ready(0);
  const before = fdCount(first.pid);

  const messages = 100; // 6,400 fds passed in all
  const peer = hostile(t, ['seqpacket-fds', path, String(messages)]);
  const sent = await peer.next('sent');
  t.is(sent.answered, messages, 'every message answered');
  // The peer still holds its connection: the service holds that one fd more, nothing else.
  const during = fdCount(first.pid);
  t.log(`service fds: ${before} before, ${during} while the peer holds its connection (${messages * 64} fds passed)`);
  t.true(during <= before + 2, `${during} fds, ${before} before`);
  peer.child.stdin!.end();
  await new Promise((resolve) => peer.child.once('exit', resolve));

  t.regex(await askSeqpacket(path, 'after'), new RegExp(`^0 ${first.pid} after$`));
  const { newPid } = await upgradeBySignal(g, 0);
  t.regex(await askSeqpacket(path, 'upgraded'), new RegExp(`^1 ${newPid} upgraded$`));
});

/** What the service's own calls to create socket files gave: files created, and refusals by code. */
async function outcomes(attempts: (() => Promise<unknown>)[]): Promise<{ created: number; refused: Record<string, number> }> {
  const result = { created: 0, refused: {} as Record<string, number> };
  for (const attempt of attempts) {
    try {
      await attempt();
      result.created++;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'other';
      result.refused[code] = (result.refused[code] ?? 0) + 1;
    }
  }
  return result;
}

const quiet = { upgradeOn: [], stopOn: [] };

test.serial('PATH-CHMOD-SYMLINK: another uid who may write the directory swaps a symlink to a root file over each new socket path as it appears: that file never changes mode or group', async (t) => {
  const dir = sharedDir(t, 0o777);
  const victim = join(sharedDir(t), 'victim');
  writeFileSync(victim, 'root only\n', { mode: 0o644 });
  const peer = hostile(t, ['symlink-swap', dir, victim]);
  await peer.next('watching');

  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const listeners = await outcomes(
    Array.from({ length: 60 }, (_, i) => {
      const path = join(dir, `s${i}.sock`);
      if (i % 3 === 0) return () => ecdysis.listenUnix(path, { mode: 0o666 });
      if (i % 3 === 1) return () => ecdysis.listenUnixDatagram(path, { mode: 0o666 });
      return () => ecdysis.listenUnixSeqpacket(path, { mode: 0o666 });
    }),
  );
  const controls = await outcomes(
    Array.from({ length: 20 }, (_, i) => async () => {
      const service = await Ecdysis.create({ upgradeOn: [{ socket: join(dir, `c${i}.sock`), mode: 0o660, group: 'nogroup' }], stopOn: [] });
      service.stop();
      await service.exit;
    }),
  );
  peer.child.stdin!.end();
  const { swaps } = await peer.next('done');
  t.log(`listeners ${JSON.stringify(listeners)}, control sockets ${JSON.stringify(controls)}, ${swaps} symlinks swapped in`);
  t.true((swaps as number) > 0, 'the attacker swapped symlinks in');
  const after = lstatSync(victim);
  t.is((after.mode & 0o777).toString(8), '644', 'the victim kept its mode');
  t.is(after.gid, 0, 'and its group');
  // What was refused was refused because the path was no longer the socket file bind made.
  t.deepEqual(Object.keys({ ...listeners.refused, ...controls.refused }).filter((code) => code !== 'ENOTSOCK'), []);
});

test.serial('PATH-MODE-WINDOW: under umask 000, another uid that connects to each new 0600 socket file the moment it appears is always refused', async (t) => {
  const dir = sharedDir(t);
  const peer = hostile(t, ['connect-race', dir]);
  await peer.next('watching');
  const umask = process.umask(0);
  t.teardown(() => process.umask(umask));

  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const listeners = await outcomes(Array.from({ length: 200 }, (_, i) => () => ecdysis.listenUnix(join(dir, `s${i}.sock`), { mode: 0o600 })));
  const controls = await outcomes(
    Array.from({ length: 20 }, (_, i) => async () => {
      // A control socket is 0600 unless told otherwise.
      const service = await Ecdysis.create({ upgradeOn: [{ socket: join(dir, `c${i}.sock`) }], stopOn: [] });
      service.stop();
      await service.exit;
    }),
  );
  process.umask(umask);
  peer.child.stdin!.end();
  const { connected, refused } = await peer.next('done');
  t.log(`listeners ${JSON.stringify(listeners)}, control sockets ${JSON.stringify(controls)}; the other uid connected ${connected} times, was refused ${refused} times`);
  t.is(listeners.created + controls.created, 220);
  t.is(connected, 0);
  t.true((refused as number) > 0, 'it did try');
  t.true(Array.from({ length: 200 }, (_, i) => lstatSync(join(dir, `s${i}.sock`)).mode & 0o777).every((mode) => mode === 0o600), 'every file is 0600');
});

test('DGRAM-REPLY-REFLECT: a sender that puts a symlink to a root-only datagram socket at its own address gets no reply written there: reply() rejects with ERR_ECDYSIS_REPLY_REFUSED; a sender answered at its own socket still is', async (t) => {
  const dir = sharedDir(t);
  const service = join(dir, 'echo.sock');
  const g = startGenerations(t, 'kinds-service.ts', { FIXTURE_DGRAM: service, FIXTURE_UNIX_MODE: '666' });
  await g.ready(0);
  // The root-only socket, in a directory only root can enter.
  const target = join(sharedDir(t, 0o700), 'root-only.sock');
  const reflected = new Recorder();
  const root: PacketSocket = new (native().PacketSocket)(native().bindUnixDatagram(target, { mode: 0o600 }), 'datagram', reflected);
  t.teardown(() => root.close());
  root.startReading();

  const clientDir = sharedDir(t, 0o777);
  const peer = hostile(t, ['dgram-reflect', service, clientDir, target]);
  t.regex((await peer.next('answered')).reply as string, /^hello 0 \d+$/, 'the service answers the other uid at its own socket');
  t.is((await peer.next('direct')).code, 'EACCES', 'the other uid cannot reach the target itself');
  await peer.next('sent');
  const outcome = await Promise.race([
    g.waitFor((r) => r.type === 'reply-failed', 30_000, 'the refused reply').then((record) => ({ refused: record })),
    reflected.until(() => reflected.messages.length > 0, 'a reflected datagram', 30_000).then(() => ({ refused: undefined })),
  ]);
  t.deepEqual(reflected.messages.map((m) => m.data.toString()), [], 'nothing reached the root-only socket');
  t.like(outcome.refused, { code: 'ERR_ECDYSIS_REPLY_REFUSED', to: join(clientDir, 'client.sock') });
  t.regex(outcome.refused!.message as string, /sendto ENOTSOCK .*client\.sock: not a socket file of the sender \(uid 65534\)/);
});
