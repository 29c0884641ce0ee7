/**
 * Attacks on a running service from another local user (uid 65534 through
 * setpriv), as the security review made them: what a peer sends must never make
 * the service hold what it did not ask for, and nothing is done by name to a
 * path another user can swap.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
