/**
 * The kinds in local mode (internal/local-mode.ts): TCP, UDP and Unix stream
 * sockets made by Node itself (listeners/local-socket.ts), with the options
 * Node can set; Unix datagram and seqpacket sockets, which Node lacks, are
 * refused by their own modules. A record made here has no fd (-1): the
 * registry holds the Node object instead, and closes it on a full stop.
 */
import type { AddressInfo } from 'node:net';
import { link, lstat, mkdtemp, chmod, chown, rm, unlink } from 'node:fs/promises';
import { constants } from 'node:os';
import { dirname, join } from 'node:path';
import { unsupportedInLocalMode, warnLocalOnce } from '../internal/local-mode.ts';
import { LocalDatagramSocket, LocalStreamSocket } from '../listeners/local-socket.ts';
import type { SocketRecord } from '../wire/sockets.ts';
import { refusesStreamConnections } from './unix-path.ts';

export type LocalRecord = Omit<SocketRecord, 'key' | 'kind'>;

/** Datagrams read ahead of a busy reader, as DatagramListener's own bound. */
const MAX_HELD_DATAGRAMS = 1024;

/**
 * Options given that Node cannot set (SO_REUSEPORT, IP_FREEBIND, TCP_FASTOPEN...):
 * they are left out, with one ECDYSIS_LOCAL_MODE warning per option.
 */
export function ignoreInLocalMode(method: string, options: Record<string, unknown>, names: readonly string[]): void {
  for (const name of names) {
    const value = options[name];
    if (value === undefined || value === false || value === 0) continue;
    warnLocalOnce(`${method}.${name}`, `${method}() option ${name} is ignored: Node cannot set it on a socket it creates`);
  }
}

/** `open(host)`; the default dual-stack host (not one given) falls back to 0.0.0.0 where IPv6 is unavailable. */
async function withIpv4Fallback<T>(hostGiven: boolean, host: string, ipv6Only: boolean, open: (address: string, ipv6Only: boolean) => Promise<T>): Promise<T> {
  try {
    return await open(host, ipv6Only);
  } catch (err) {
    if (hostGiven || (err as NodeJS.ErrnoException).code !== 'EAFNOSUPPORT') throw err;
    return open('0.0.0.0', false);
  }
}

/** A listening TCP socket made by Node; the default dual-stack host falls back to 0.0.0.0 without IPv6. */
export async function listenLocalTcp(hostGiven: boolean, host: string, port: number, options: { backlog: number; allowHalfOpen: boolean; ipv6Only: boolean }): Promise<LocalRecord> {
  const listen = (address: string, ipv6Only: boolean) =>
    LocalStreamSocket.listen({ host: address, port, backlog: options.backlog, ...(address.includes(':') ? { ipv6Only } : {}) }, { allowHalfOpen: options.allowHalfOpen });
  const local = await withIpv4Fallback(hostGiven, host, options.ipv6Only, listen);
  const bound = local.server.address() as AddressInfo;
  return { fd: -1, local, host: bound.address, port: bound.port };
}

/** A bound UDP socket made by Node (dgram); the same fallback as TCP. */
export async function bindLocalUdp(
  hostGiven: boolean,
  host: string,
  port: number,
  options: { ipv6Only: boolean; recvBufferSize: number; sendBufferSize: number },
): Promise<LocalRecord> {
  const bind = (address: string, ipv6Only: boolean) =>
    LocalDatagramSocket.open(
      {
        type: address.includes(':') ? 'udp6' : 'udp4',
        ipv6Only,
        ...(options.recvBufferSize > 0 ? { recvBufferSize: options.recvBufferSize } : {}),
        ...(options.sendBufferSize > 0 ? { sendBufferSize: options.sendBufferSize } : {}),
      },
      address,
      port,
      MAX_HELD_DATAGRAMS,
    );
  const local = await withIpv4Fallback(hostGiven, host, options.ipv6Only, bind);
  const bound = local.socket.address();
  return { fd: -1, local, host: bound.address, port: bound.port };
}

/**
 * A listening Unix stream socket made by Node at `path`, whose file never
 * exists there with another mode than the one asked for: Node binds it in a
 * private directory (0700) beside `path`, its mode (and group) is set there,
 * and it is hard-linked into place, which fails rather than replace anything
 * (a leftover socket file nobody listens on is replaced; anything else is
 * EADDRINUSE, as bind says on Linux). The inode is recorded, so that a full
 * stop unlinks only this file.
 */
export async function listenLocalUnix(
  path: string,
  options: { backlog: number; allowHalfOpen: boolean; mode?: number | undefined; gid?: number | undefined; highWaterMark?: number },
): Promise<LocalRecord> {
  if (path.startsWith('\0')) throw unsupportedInLocalMode('abstract Unix socket names are unavailable', 'they exist on Linux only; use a filesystem path');
  const dir = await mkdtemp(join(dirname(path), '.ecdysis-'));
  try {
    const temporary = join(dir, 's');
    const { allowHalfOpen, highWaterMark } = options;
    const local = await LocalStreamSocket.listen({ path: temporary, backlog: options.backlog }, { allowHalfOpen, ...(highWaterMark === undefined ? {} : { highWaterMark }) });
    try {
      if (options.mode !== undefined) await chmod(temporary, options.mode);
      if (options.gid !== undefined) await chown(temporary, -1, options.gid);
      await linkInPlace(temporary, path);
      // libuv unlinks the path it bound when the server closes: that one is gone already.
      await unlink(temporary);
      const info = await lstat(path);
      return { fd: -1, local, path, pathInode: info.ino };
    } catch (err) {
      local.close();
      throw err;
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function linkInPlace(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
    return;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    const info = await lstat(to).catch(() => undefined);
    if (!info?.isSocket() || !(await refusesStreamConnections(to))) throw inUse(to);
  }
  await unlink(to).catch(() => {});
  try {
    await link(from, to);
  } catch (err) {
    throw (err as NodeJS.ErrnoException).code === 'EEXIST' ? inUse(to) : err;
  }
}

/** What bind(2) says on Linux for a path that is taken. */
function inUse(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`listen EADDRINUSE: address already in use ${path}`), { code: 'EADDRINUSE', errno: -constants.errno.EADDRINUSE, syscall: 'listen', address: path });
}

/** What a stream listener serves on: the registry's fd, or in local mode the Node server. */
export function streamSource(socket: SocketRecord): { fd: number | undefined; local: LocalStreamSocket | undefined } {
  return socket.local instanceof LocalStreamSocket ? { fd: undefined, local: socket.local } : { fd: socket.fd, local: undefined };
}

/** What a UDP listener reads: the registry's fd, or in local mode the dgram socket. */
export function datagramSource(socket: SocketRecord): { fd: number | undefined; local: LocalDatagramSocket | undefined } {
  return socket.local instanceof LocalDatagramSocket ? { fd: undefined, local: socket.local } : { fd: socket.fd, local: undefined };
}
