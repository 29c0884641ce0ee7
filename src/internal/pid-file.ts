/**
 * PID file handling: written atomically (temporary file in the same directory,
 * then rename), so a reader never sees a half-written or empty file.
 */
import { readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

export async function writePidFile(path: string, pid = process.pid): Promise<void> {
  const temporary = join(dirname(path), `.${basename(path)}.${pid}.tmp`);
  try {
    await writeFile(temporary, `${pid}\n`, { mode: 0o644 });
    await rename(temporary, path);
  } catch (err) {
    await unlink(temporary).catch(() => {});
    throw err;
  }
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
