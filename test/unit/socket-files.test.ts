/**
 * The socket files the Unix kinds and control sockets create: exactly the mode
 * and group asked for, under any umask, in a setgid directory, as root or as
 * another user; what is already at a path is refused and left alone; a full
 * stop unlinks only the service's own file.
 */
import test, { type ExecutionContext } from 'ava';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ecdysis } from '../../src/index.ts';
import { native } from '../../src/internal/native.ts';
import { fixtureCommand } from '../helpers/generations.ts';
import { jsonLines } from '../helpers/native.ts';
import { runCommand } from '../helpers/run.ts';

const quiet = { upgradeOn: [], stopOn: [] };

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-files-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The socket-files fixture under `umask`, optionally through setpriv; its report. */
async function socketFiles(dir: string, umask: string, group: string, asUser: string[] = []): Promise<Record<string, unknown>> {
  const command = [...asUser, process.execPath, ...fixtureCommand('socket-files.ts'), dir];
  const result = await runCommand('sh', ['-c', `umask ${umask} && exec "$@"`, 'sh', ...command], { env: { ...process.env, FIXTURE_GROUP: group }, timeoutMs: 60_000 });
  const report = jsonLines(result.stdout).find((r) => r.type === 'files');
  if (!report || result.code !== 0) throw new Error(`socket-files exited ${result.code}: ${result.stderr}`);
  return report;
}

test('root under umask 022: each kind gets exactly its mode (0666 included), the control socket its mode and group; the umask is untouched', async (t) => {
  const report = await socketFiles(tempDir(t), '022', 'nogroup');
  t.deepEqual(report.files, {
    'control.sock': { mode: '660', gid: 65534, uid: 0 },
    'stream.sock': { mode: '666', gid: 0, uid: 0 },
    'datagram.sock': { mode: '640', gid: 0, uid: 0 },
    'seqpacket.sock': { mode: '620', gid: 0, uid: 0 },
  });
  t.like(report, { umask: '22', umaskAfter: '22' });
});

test('root under umask 077 in a setgid directory: the modes are exact, the control socket gets the group asked for and the others the directory\'s', async (t) => {
  const dir = join(tempDir(t), 'setgid');
  mkdirSync(dir);
  chownSync(dir, 0, 100);
  chmodSync(dir, 0o2775);
  const report = await socketFiles(dir, '077', 'nogroup');
  t.deepEqual(report.files, {
    'control.sock': { mode: '660', gid: 65534, uid: 0 },
    'stream.sock': { mode: '666', gid: 100, uid: 0 },
    'datagram.sock': { mode: '640', gid: 100, uid: 0 },
    'seqpacket.sock': { mode: '620', gid: 100, uid: 0 },
  });
});

test('another user under umask 000, with a supplementary group for the control socket (no CAP_SETGID: created unreachable, then given its group and mode through the file itself)', async (t) => {
  const outer = tempDir(t);
  chmodSync(outer, 0o755);
  const dir = join(outer, 'nobody');
  mkdirSync(dir);
  chownSync(dir, 65534, 65534);
  const report = await socketFiles(dir, '000', 'users', ['setpriv', '--reuid=65534', '--regid=65534', '--groups=100']);
  t.deepEqual(report.files, {
    'control.sock': { mode: '660', gid: 100, uid: 65534 },
    'stream.sock': { mode: '666', gid: 65534, uid: 65534 },
    'datagram.sock': { mode: '640', gid: 65534, uid: 65534 },
    'seqpacket.sock': { mode: '620', gid: 65534, uid: 65534 },
  });
});

test('what is at a path already is refused with EADDRINUSE and left as it was: a file, a directory, symlinks, a live socket of another type', async (t) => {
  const dir = tempDir(t);
  const target = join(dir, 'target');
  writeFileSync(target, 'keep\n', { mode: 0o644 });
  const paths = {
    file: join(dir, 'file.sock'),
    directory: join(dir, 'dir.sock'),
    symlink: join(dir, 'link.sock'),
    dangling: join(dir, 'dangling.sock'),
    live: join(dir, 'live.sock'),
  };
  writeFileSync(paths.file, 'keep\n', { mode: 0o600 });
  mkdirSync(paths.directory);
  writeFileSync(join(paths.directory, 'inside'), 'keep\n');
  symlinkSync(target, paths.symlink);
  symlinkSync(join(dir, 'nowhere'), paths.dangling);
  const live = native().bindUnixDatagram(paths.live);
  t.teardown(() => native().close(live));
  const ecdysis = await Ecdysis.create({ upgradeOn: [{ socket: paths.file, mode: 0o666 }], stopOn: [] }).catch((err: NodeJS.ErrnoException) => err);
  t.is((ecdysis as NodeJS.ErrnoException).code, 'EADDRINUSE', 'a control socket on a file');
  const service = await Ecdysis.create(quiet);
  t.teardown(() => service.stop());
  for (const path of Object.values(paths)) {
    for (const listen of [() => service.listenUnix(path, { mode: 0o666 }), () => service.listenUnixSeqpacket(path, { mode: 0o666 })]) {
      await t.throwsAsync(listen(), { code: 'EADDRINUSE' }, path);
    }
  }
  await t.throwsAsync(service.listenUnixDatagram(paths.symlink, { mode: 0o666 }), { code: 'EADDRINUSE' });
  t.is(readFileSync(paths.file, 'utf8'), 'keep\n');
  t.is(lstatSync(paths.file).mode & 0o777, 0o600);
  t.is(readFileSync(join(paths.directory, 'inside'), 'utf8'), 'keep\n');
  t.is(readlinkSync(paths.symlink), target);
  t.is(lstatSync(target).mode & 0o777, 0o644);
  t.is(readlinkSync(paths.dangling), join(dir, 'nowhere'));
  t.true(lstatSync(paths.live).isSocket());
});

test('a full stop unlinks only the file the service created: a file put in its place survives', async (t) => {
  const dir = tempDir(t);
  const ecdysis = await Ecdysis.create(quiet);
  const replaced = join(dir, 'replaced.sock');
  const kept = join(dir, 'kept.sock');
  await ecdysis.listenUnix(replaced, { mode: 0o600 });
  await ecdysis.listenUnixDatagram(kept, { mode: 0o600 });
  await ecdysis.ready();
  writeFileSync(join(dir, 'other'), 'not a socket\n');
  renameSync(join(dir, 'other'), replaced);
  ecdysis.stop();
  await ecdysis.exit;
  t.is(readFileSync(replaced, 'utf8'), 'not a socket\n');
  t.false(existsSync(kept), 'its own file is unlinked');
});
