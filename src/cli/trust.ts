/**
 * Whom the CLI believes. A control socket answers with whatever the process
 * listening there writes, and a PID file names whatever its writer wrote: the
 * CLI (often run as root, from ExecReload= or a deploy script) acts on neither
 * unless it comes from someone who could not have lied to it.
 */
import { realpathSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';
import type { PeerCredentials } from '../internal/native.ts';

/**
 * Why `path` may have been put there, or written, by someone other than root
 * and `owner`; undefined when it cannot have been. The file and every directory
 * above it (symlinks resolved) must be owned by root or `owner`; a regular file
 * must not be writable by group or others (a socket's write bit only lets them
 * connect). The file's own directory must not be writable by group or others
 * (anyone could create a name there, sticky bit or not); a directory higher up
 * may be, with the sticky bit (as /tmp): nobody else can rename or remove the
 * entry below it, which root or `owner` owns. This is systemd's rule for a
 * PIDFile= that root does not own.
 */
export function pathProblem(path: string, owner: number): string | undefined {
  const ours = (st: Stats) => st.uid === 0 || st.uid === owner;
  const mode = (st: Stats) => (st.mode & 0o7777).toString(8).padStart(4, '0');
  try {
    const real = realpathSync(path);
    const file = statSync(real);
    if (!ours(file)) return `${real} is owned by uid ${file.uid}`;
    if (file.isFile() && (file.mode & 0o022) !== 0) return `${real} is writable by group or others (mode ${mode(file)})`;
    for (let dir = dirname(real), first = true; ; dir = dirname(dir), first = false) {
      const st = statSync(dir);
      if (!ours(st)) return `${dir} is owned by uid ${st.uid}`;
      const othersWrite = (st.mode & 0o022) !== 0;
      const sticky = (st.mode & 0o1000) !== 0;
      if (othersWrite && (first || !sticky)) return `${dir} is writable by group or others (mode ${mode(st)})`;
      if (dir === '/') return undefined;
    }
  } catch (err) {
    return `${path} cannot be checked: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
}

/**
 * Whether the process serving a control socket is one whose answers count:
 * root, the user running the CLI, a uid given with --server-uid, or (a
 * filesystem socket) the owner of the socket file when nobody else could have
 * created it (pathProblem): the service that bound it, typically in its own
 * runtime directory. An abstract name has no owner and no permissions: anyone in
 * the network namespace can bind one, so only the uids above count there.
 * Returns why not, or undefined.
 */
export function serverProblem(path: string, server: PeerCredentials, serverUids: readonly number[]): string | undefined {
  const own = process.geteuid?.() ?? 0;
  if (server.uid === 0 || server.uid === own || serverUids.includes(server.uid)) return undefined;
  // pid 0: local mode, where the socket file's owner stands for the server (client.ts).
  const who = server.pid > 0 ? `the process serving ${path} (pid ${server.pid}) runs as uid ${server.uid}` : `${path} is owned by uid ${server.uid}`;
  const usual = `not root, not this user (uid ${own})${serverUids.length ? `, not --server-uid ${serverUids.join(',')}` : ''}`;
  if (path.startsWith('@')) return `${who}: ${usual}; an abstract name can be bound by any user (give --server-uid ${server.uid} if that is the service)`;
  let owner: number;
  try {
    owner = statSync(path).uid;
  } catch (err) {
    return `${who}, and ${path} cannot be checked: ${(err as NodeJS.ErrnoException).code}`;
  }
  if (owner !== server.uid) return `${who}: ${usual}, nor the owner of ${path} (uid ${owner})`;
  const problem = pathProblem(path, owner);
  if (problem) return `${who}, the owner of ${path}, but another user could have put it there: ${problem} (give --server-uid ${server.uid} if that is the service)`;
  return undefined;
}
