/**
 * Unix socket paths, shared by the Unix kinds: a path this service creates is
 * unlinked only on a full stop, and only if it is still the file it created; a
 * stale socket file nobody listens on is replaced.
 */
import type { Stats } from 'node:fs';
import { lstat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { constants } from 'node:os';
import { resolve as resolvePath } from 'node:path';
import { debuglog } from 'node:util';
import { closeQuietly, native } from '../internal/native.ts';
import type { BoundAddress, SocketRecord } from './kind.ts';

const debug = debuglog('ecdysis');

/** The absolute path, or the abstract name as it is. */
export function fullPath(path: string): string {
  return path.startsWith('\0') ? path : resolvePath(path);
}

/** The key part for a path: abstract names shown as '@name'. */
export function keyPath(path: string): string {
  return path.startsWith('\0') ? `@${path.slice(1)}` : path;
}

/**
 * Bind a path with `bind()` (which returns the fd, the file already created
 * with its final mode and group: see native/paths.cc); a leftover socket file
 * that nobody listens on (connect refused) is replaced, one that answers is
 * EADDRINUSE. Then record the file's inode (lstat: the path itself, never what
 * a link there points to), so that only this file is ever unlinked or changed.
 */
export async function bindPath(
  path: string,
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
  let info: Stats;
  try {
    info = await lstat(path);
  } catch (err) {
    closeQuietly(fd);
    throw err;
  }
  if (!info.isSocket()) {
    // Somebody replaced the file bind made: what is there now is not ours to unlink.
    closeQuietly(fd);
    throw Object.assign(new Error(`lstat ENOTSOCK ${path}: the socket file was replaced right after bind`), { code: 'ENOTSOCK', errno: -constants.errno.ENOTSOCK, syscall: 'lstat', path });
  }
  return { fd, path, pathInode: info.ino };
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
export function refusesStreamConnections(path: string): Promise<boolean> {
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

/**
 * An inherited socket file gets the mode (and group) this release asks for, if
 * it is still the file that was bound (same inode, a socket, one link): changed
 * through the file itself, never through a link at its path. Where that cannot
 * be done safely, the file keeps its mode and a warning says so.
 */
export function reapplyFileMode(socket: SocketRecord, mode: number, gid?: number): void {
  const path = socket.path;
  if (path === undefined || path.startsWith('\0') || socket.activated) return; // no file, or systemd's (SocketMode=)
  let failure: string;
  if (socket.pathInode === undefined) {
    failure = 'which inode was bound is unknown';
  } else {
    try {
      if (native().setSocketFileMode(path, socket.pathInode, mode, gid)) debug('%s: %s is now mode %s%s', socket.key, path, mode.toString(8), gid === undefined ? '' : ` group ${gid}`);
      return;
    } catch (err) {
      failure = (err as Error).message;
    }
  }
  process.emitWarning(`${socket.key}: the socket file ${path} keeps its mode and group; mode 0${mode.toString(8)}${gid === undefined ? '' : ` and group ${gid}`} cannot be applied: ${failure}`, {
    code: 'ECDYSIS_SOCKET_MODE_NOT_APPLIED',
  });
}
