/**
 * PID file handling. Written atomically (a temporary file in the same
 * directory, then rename), so a reader never sees a half-written or empty file.
 * The temporary file has an unpredictable name and is created with O_EXCL and
 * O_NOFOLLOW, so a symlink or file planted in a shared directory is never
 * followed or overwritten.
 */
import { crypto } from './builtins.ts';
import { constants } from 'node:fs';
import { open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { EcdysisError } from '../errors.ts';

const CREATE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/** Write `pid` to `path` atomically; throws ERR_ECDYSIS_PID_FILE naming the path. */
export async function writePidFile(path: string, pid = process.pid, mode = 0o644): Promise<void> {
  await writeBeside(path, pid, mode, (temporary) => rename(temporary, path));
}

/** Whether `writePidFile()` could write it now (nothing is left behind); throws as it does. */
export async function checkPidFileWritable(path: string, pid = process.pid, mode = 0o644): Promise<void> {
  await writeBeside(path, pid, mode, (temporary) => unlink(temporary));
}

/** Write `pid` to a temporary file beside `path`, then `finish` it (removed if anything fails). */
async function writeBeside(path: string, pid: number, mode: number, finish: (temporary: string) => Promise<void>): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${crypto().randomBytes(8).toString('hex')}.tmp`);
  let created = false;
  try {
    const handle = await open(temporary, CREATE_FLAGS, mode);
    created = true;
    try {
      // Exactly `mode`, whatever the umask.
      await handle.chmod(mode);
      await handle.writeFile(`${pid}\n`);
    } finally {
      await handle.close();
    }
    await finish(temporary);
  } catch (err) {
    if (created) await unlink(temporary).catch(() => {});
    throw new EcdysisError('ERR_ECDYSIS_PID_FILE', `could not write the PID file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** The PID file's directory must exist when the service starts, not only when it is first ready. */
export async function checkPidFileDirectory(path: string): Promise<string | undefined> {
  const directory = dirname(path);
  try {
    if (!(await stat(directory)).isDirectory()) return `is in ${directory}, which is not a directory`;
  } catch (err) {
    return `is in ${directory}, which cannot be used (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`;
  }
  return undefined;
}

/** Remove the PID file, but only while it still names `pid` (a newer generation may own it). */
export async function removePidFileIfOwned(path: string, pid = process.pid): Promise<void> {
  try {
    const content = await readFile(path, 'utf8');
    if (content.trim() === String(pid)) await unlink(path);
  } catch {
    // Already gone or unreadable: nothing of ours to remove.
  }
}
