/**
 * Socket activation: the sockets systemd passes in LISTEN_FDS (from fd 3 on),
 * named by LISTEN_FDNAMES, for this process when LISTEN_PID is its pid (the
 * rules of sd_listen_fds(3): no LISTEN_PID, or another pid's, means they are
 * not for us). The variables are removed from the environment whatever they
 * say, so no subprocess takes the sockets for its own.
 */
import { debuglog } from 'node:util';
import { EcdysisError } from '../errors.ts';
import { native, type FdDescription } from '../internal/native.ts';
import { KIND_FACTS, kindOfDescription, type BoundAddress, type SocketKind } from '../wire/sockets.ts';

const debug = debuglog('ecdysis');

/** The first fd systemd passes. */
export const SD_LISTEN_FDS_START = 3;
/** Names systemd gives fds that are not listening sockets of a unit (or have no name). */
const GENERIC_NAMES = new Set(['unknown', 'stored', 'connection']);
/** The prefix of the names this library gives the sockets it puts in systemd's fd store. */
export const FD_STORE_PREFIX = 'ecdysis.';

export interface ActivatedSocket {
  fd: number;
  /**
   * The hand-over key: `systemd:<name>` (`systemd:<name>:<n>` for the nth socket
   * of that name), or the listener's own key for a socket this library stored.
   */
  key: string;
  /** The name from LISTEN_FDNAMES, unless generic. */
  name: string | undefined;
  kind: SocketKind;
  address: BoundAddress;
  /** One this library put in systemd's fd store (under its own key), rather than a socket unit's. */
  stored: boolean;
}

function systemdError(message: string): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_SYSTEMD', message);
}

/**
 * Read (and remove) LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES. Returns the
 * listening sockets passed to this process; fds that are not listening sockets
 * (an accepted connection, a stored file) are left alone.
 *
 * @throws {EcdysisError} ERR_ECDYSIS_SYSTEMD for garbage values, a count that
 * does not match the names, or an fd that is not open.
 */
export function readListenFds(env: NodeJS.ProcessEnv, pid = process.pid): ActivatedSocket[] {
  const { LISTEN_PID: listenPid, LISTEN_FDS: listenFds, LISTEN_FDNAMES: listenNames } = env;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (listenFds === undefined) return [];
  // sd_listen_fds(3): without LISTEN_PID the variables are not for this process
  // (a wrapper that cleared only LISTEN_PID, so that its child would not take them).
  if (listenPid === undefined) {
    debug('LISTEN_FDS=%s without LISTEN_PID: not for this process, ignored', listenFds.slice(0, 32));
    return [];
  }
  if (!/^\d{1,10}$/.test(listenPid)) throw systemdError(`LISTEN_PID=${JSON.stringify(listenPid)} is not a pid`);
  if (Number(listenPid) !== pid) {
    debug('LISTEN_FDS are for pid %s, not this process (%d): ignored', listenPid, pid);
    return [];
  }
  if (!/^\d{1,4}$/.test(listenFds)) throw systemdError(`LISTEN_FDS=${JSON.stringify(listenFds.slice(0, 32))} is not a count`);
  const count = Number(listenFds);
  const names = listenNames === undefined ? undefined : listenNames.split(':');
  if (names && names.length !== count) throw systemdError(`LISTEN_FDNAMES names ${names.length} sockets, LISTEN_FDS says ${count}`);
  // A socket unit's FileDescriptorName= names all its sockets: the second one
  // named "web" gets the key systemd:web:2 (':' is in no name), and so on.
  const seen = new Map<string, number>();
  const sockets: ActivatedSocket[] = [];
  for (let i = 0; i < count; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    const raw = names?.[i] ?? 'unknown';
    const name = GENERIC_NAMES.has(raw) || raw === '' ? undefined : raw;
    let description: FdDescription;
    try {
      description = native().describe(fd);
    } catch (err) {
      throw systemdError(`LISTEN_FDS passes fd ${fd} ("${raw}"), which is not open: ${(err as Error).message}`);
    }
    const kind = kindOfDescription(description);
    if (!kind || raw === 'connection') {
      debug('LISTEN_FDS fd %d ("%s") is not a listening socket: left alone', fd, raw);
      continue;
    }
    native().setCloexec(fd, true);
    const address: BoundAddress = KIND_FACTS[kind].family === 'inet' ? { host: description.address ?? '', port: description.port ?? 0 } : { path: description.path ?? '' };
    const stored = name?.startsWith(FD_STORE_PREFIX) === true;
    let key = stored ? decodeStoredName(name!) : `systemd:${name ?? `fd${fd}`}`;
    if (name !== undefined && !stored) {
      const nth = (seen.get(name) ?? 0) + 1;
      seen.set(name, nth);
      if (nth > 1) key = `${key}:${nth}`;
    }
    sockets.push({ fd, key, name, kind, address, stored });
  }
  return sockets;
}

/**
 * The fd store name for a listener key: FDNAME allows printable ASCII up to 255
 * characters, without ':' (LISTEN_FDNAMES is colon-separated).
 */
export function storedName(key: string): string | undefined {
  const name = FD_STORE_PREFIX + encodeURIComponent(key);
  return name.length <= 255 ? name : undefined;
}

function decodeStoredName(name: string): string {
  try {
    return decodeURIComponent(name.slice(FD_STORE_PREFIX.length));
  } catch {
    return `systemd:${name}`;
  }
}
