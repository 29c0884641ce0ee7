/** The PID file is written atomically and never through a planted file or link. */
import test from 'ava';
import { existsSync, mkdtempSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkPidFileDirectory, writePidFile } from '../../src/internal/pid-file.ts';

test('a symlink planted where the temporary file used to be is never followed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-pid-'));
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'precious\n');
  const pidFile = join(dir, 'app.pid');
  // The name the temporary file had before: predictable from the pid.
  symlinkSync(victim, join(dir, `.app.pid.${process.pid}.tmp`));
  await writePidFile(pidFile);
  t.is(readFileSync(victim, 'utf8'), 'precious\n');
  t.is(readFileSync(pidFile, 'utf8'), `${process.pid}\n`);
  t.deepEqual(readdirSync(dir).sort(), [`.app.pid.${process.pid}.tmp`, 'app.pid', 'victim'], 'no temporary file left');
});

test('mode is exact whatever the umask; a symlink at the PID file path is replaced, not followed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-pid-'));
  const victim = join(dir, 'victim');
  writeFileSync(victim, 'precious\n');
  const pidFile = join(dir, 'app.pid');
  symlinkSync(victim, pidFile);
  const umask = process.umask(0o077);
  try {
    await writePidFile(pidFile, 1234, 0o644);
  } finally {
    process.umask(umask);
  }
  t.is(readFileSync(victim, 'utf8'), 'precious\n');
  t.is(readFileSync(pidFile, 'utf8'), '1234\n');
  t.is(statSync(pidFile).mode & 0o777, 0o644);
});

test('a PID file that cannot be written is a coded error naming it; its directory is checked up front', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-pid-'));
  const missing = join(dir, 'nope', 'app.pid');
  await t.throwsAsync(writePidFile(missing), { code: 'ERR_ECDYSIS_PID_FILE', message: new RegExp(`${missing}.*ENOENT`) });
  t.regex((await checkPidFileDirectory(missing)) ?? '', /nope.*ENOENT/);
  writeFileSync(join(dir, 'file'), '');
  t.regex((await checkPidFileDirectory(join(dir, 'file', 'app.pid'))) ?? '', /not a directory|ENOTDIR/);
  t.is(await checkPidFileDirectory(join(dir, 'app.pid')), undefined);
  t.false(existsSync(join(dir, 'nope')));
});
