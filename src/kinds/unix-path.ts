/**
 * Unix socket paths, shared by the Unix kinds: a path this service creates is
 * unlinked only on a full stop, and only if it is still the file it created; a
 * stale socket file nobody listens on is replaced.
 */
import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { resolve as resolvePath } from 'node:path';
import { closeQuietly, native } from '../internal/native.ts';
import type { BoundAddress } from './kind.ts';

/** The absolute path, or the abstract name as it is. */
export function fullPath(path: string): string {
  return path.startsWith('\0') ? path : resolvePath(path);
}

/** The key part for a path: abstract names shown as '@name'. */
export function keyPath(path: string): string {
  return path.startsWith('\0') ? `@${path.slice(1)}` : path;
}

/**
 * Bind a path with `bind()` (which returns the fd); a leftover socket file that
 * nobody listens on (connect refused) is replaced, one that answers is EADDRINUSE.
 * Then set the mode and record the inode, so that only this file is ever unlinked.
 */
export async function bindPath(
  path: string,
  mode: number | undefined,
  bind: () => number,
  isStale: (path: string) => Promise<boolean> = refusesStreamConnections,
): Promise<{ fd: number } & BoundAddress> {
  let fd: number;
  try {
    fd = bind();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || path.startsWith('\0')) throw err;
    const info = await lstat(path).catch(() => undefined);
    if (!info?.isSocket() || !(await isStale(path))) throw err;
    await unlink(path).catch(() => {});
    fd = bind();
  }
  if (path.startsWith('\0')) return { fd, path };
  let pathInode: number | undefined;
  try {
    if (mode !== undefined) await chmod(path, mode);
    pathInode = (await stat(path)).ino;
    return { fd, path, pathInode };
  } catch (err) {
    closeQuietly(fd);
    if (pathInode !== undefined) await unlinkIfSame(path, pathInode);
    throw err;
  }
}

/** A socket file nobody listens on (or is bound to): a connect of its type is refused. */
export async function refusesConnections(path: string, type: 'dgram' | 'seqpacket'): Promise<boolean> {
  try {
    closeQuietly(native().connectUnix(path, type));
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ECONNREFUSED';
  }
}

/** A stream socket file nobody listens on: a connect is refused. */
function refusesStreamConnections(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(path);
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ECONNREFUSED'));
  });
}

export async function unlinkIfSame(path: string, inode: number): Promise<void> {
  try {
    if ((await lstat(path)).ino === inode) await unlink(path);
  } catch {
    // Gone already, or not ours any more.
  }
}
