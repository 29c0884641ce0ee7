/**
 * Who is at the other end of a local socket the library serves or asks, and
 * whether it may talk to us: one way for control sockets and retire endpoints.
 *
 * The fd always comes from the addon (accepted by its server, or connected by
 * connectUnix), so SO_PEERCRED is read before Node reads or writes a byte and no
 * Node internals are needed. What SO_PEERCRED gives: the pid, uid and gid
 * (effective, primary) of the process that connected, or of the one that called
 * listen() when read on a connecting socket, as they were at that moment.
 * Supplementary groups are not part of it.
 */
import { writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { closeQuietly, native, type PeerCredentials } from './native.ts';

export type { PeerCredentials };

/** Who may use an endpoint: root and this process's uid always, plus what the application allowed. */
export interface PeerPolicy {
  admits(peer: PeerCredentials): boolean;
}

/**
 * Root, this process's uid, the `uids` listed, and any peer whose gid (the
 * effective gid SO_PEERCRED reports) is one of `gids`.
 */
export function peerPolicy(uids: readonly number[] = [], gids: readonly number[] = []): PeerPolicy {
  const allowedUids = new Set([0, process.getuid?.() ?? 0, ...uids]);
  const allowedGids = new Set(gids);
  return { admits: (peer) => allowedUids.has(peer.uid) || allowedGids.has(peer.gid) };
}

/** SO_PEERCRED of a connected Unix socket; undefined when it cannot be read (the peer is already gone). */
export function peerOf(fd: number): PeerCredentials | undefined {
  try {
    return native().peerCredentials(fd);
  } catch {
    return undefined;
  }
}

/** How long a refused connection is kept after its line, at most: a client that wrote its request at once still reads the line. */
const REFUSAL_LINGER_MS = 1_000;
/** Refused connections kept at once (per process); beyond, they are closed the moment their line is written. */
const MAX_LINGERING = 64;
const lingering = new Set<Socket>();

/**
 * Turn a connection away: one short line, then the end of the connection. A
 * client usually writes its request right after connect(); were the fd closed
 * at once, that write could fail (EPIPE) before the client read the line. So
 * the line is followed by a shutdown of this side, what the client sends is
 * read and discarded, and the fd is closed when the client closes its side or
 * after REFUSAL_LINGER_MS, whichever comes first. At most MAX_LINGERING
 * connections linger: beyond (a flood), the line is written straight to the fd
 * and the fd closed at once. A refused peer therefore holds nothing of this
 * process for long, however long it keeps its own end open.
 */
export function refuseConnection(fd: number, line: string): void {
  if (lingering.size >= MAX_LINGERING) {
    try {
      // An empty socket buffer takes a short line in one write.
      writeSync(fd, line);
    } catch {
      // EPIPE, EAGAIN: nobody to tell.
    }
    return closeQuietly(fd);
  }
  const socket = adoptConnection(fd);
  if (!socket) return;
  lingering.add(socket);
  const timer = setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS);
  timer.unref();
  socket.once('close', () => {
    clearTimeout(timer);
    lingering.delete(socket);
  });
  // Discarded; the client's end ends this side too (no half-open connection).
  socket.resume();
  socket.end(line);
}

/**
 * A Node socket on an accepted connection whose peer was checked: it never
 * keeps the process alive, and its errors end it quietly. Undefined (and the fd
 * closed) when Node cannot take it.
 */
export function adoptConnection(fd: number, options: { writableHighWaterMark?: number } = {}): Socket | undefined {
  let socket: Socket;
  try {
    socket = new Socket({ fd, readable: true, writable: true, ...options } as ConstructorParameters<typeof Socket>[0]);
  } catch {
    closeQuietly(fd);
    return undefined;
  }
  socket.unref();
  socket.on('error', () => {});
  return socket;
}
