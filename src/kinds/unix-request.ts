/**
 * What the three Unix kinds share when a socket is asked for: the path (or a
 * systemd name), the file mode, the key, creation that replaces a stale file,
 * and a discard that unlinks only the file this service created.
 */
import { closeQuietly, type UnixFileOptions } from '../internal/native.ts';
import { invalidOption } from '../errors.ts';
import { notPassedBySystemd, optionalInteger, optionalName, optionalSystemdName, systemdKey, validateUnixPath, type KindSpec, type ListenRequest, type SocketRecord } from './kind.ts';
import { bindPath, fullPath, keyPath, reapplyFileMode, unlinkIfSame } from './unix-path.ts';

/** The two ways a Unix listen method is called: (path, options) or ({ systemd, ... }). */
export function splitPathArguments<O>(pathOrOptions: unknown, options: O | undefined): { path: string | undefined; options: O | undefined } {
  if (typeof pathOrOptions === 'object' && pathOrOptions !== null && options === undefined) return { path: undefined, options: pathOrOptions as O };
  return { path: pathOrOptions as string, options };
}

export function unixRequest<L>(
  spec: KindSpec,
  path: string | undefined,
  options: Record<string, unknown>,
  bind: (path: string, file: UnixFileOptions) => number,
  isStale: ((path: string) => Promise<boolean>) | undefined,
  listener: (socket: SocketRecord & { inherited: boolean }, path: string) => L,
): ListenRequest<L> {
  const systemd = optionalSystemdName(options);
  if (systemd === undefined || path !== undefined) validateUnixPath(path);
  const mode = optionalMode(options);
  if (systemd !== undefined && mode !== undefined) throw invalidOption('options.mode', 'cannot be given with options.systemd (the socket unit sets SocketMode=)', mode);
  const name = optionalName(options);
  const full = path === undefined ? undefined : fullPath(path);
  return {
    spec,
    name,
    systemd,
    key: systemd !== undefined ? systemdKey(systemd) : `${spec.kind}:${keyPath(full!)}`,
    numbered: systemd !== undefined && full === undefined,
    address: full === undefined ? {} : { path: full },
    create: () => (systemd !== undefined ? notPassedBySystemd(systemd) : bindPath(full!, () => bind(full!, mode === undefined ? {} : { mode }), isStale)),
    async discard(created) {
      if (created.local) created.local.close();
      else closeQuietly(created.fd);
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    adopt(socket) {
      // A release that asks no mode leaves the file as it is.
      if (mode !== undefined) reapplyFileMode(socket, mode);
    },
    listener: (socket) => listener(socket, socket.path ?? full!),
  };
}

/** A Unix socket file mode: permission bits only (setuid and friends mean nothing here and hide mistakes). */
export function optionalMode(options: Record<string, unknown>): number | undefined {
  return options.mode === undefined ? undefined : optionalInteger(options, 'mode', 0, 0, 0o777);
}
