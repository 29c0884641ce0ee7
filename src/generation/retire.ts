/**
 * Upgrades while older generations still drain (`maxDrainingGenerations` > 1).
 *
 * Each generation that upgrades under that option opens a retire endpoint: a
 * Unix stream socket in the abstract namespace, named by 128 random bits and
 * passed to its descendants in hello's `draining` chain. The name is not a
 * secret: /proc/net/unix lists every abstract name to every user, and once a
 * generation is drained its name is free for anyone to bind. What protects
 * both sides is SO_PEERCRED: the endpoint answers only this uid or root, and a
 * descendant believes an answer only from the very process it asks (pid as
 * named in the chain, and this uid or root); anyone else at that name counts
 * as "gone". It is gone, with no file left behind, the moment the generation
 * closes it or dies. No pid is ever signalled, so a reused pid is never hit.
 *
 * Both sides are the addon's sockets (listenUnix, connectUnix): the name is
 * bound and connected at its exact length, whatever Node's own handling of
 * abstract names, and credentials are read on the fd before a byte moves. An
 * ancestor of an earlier release bound its name through Node 20, which pads it
 * with NULs to the whole sun_path: askAncestor tries that address second.
 *
 * Protocol: one request line, one answer line, both at most
 * {@link MAX_LINE_BYTES} bytes:
 *   status\n             → state <state>\n, then EOF
 *   finish <pid>\n       → finishing\n, then EOF once this generation is drained
 *                          (or refused <state>\n, then EOF, when it is not draining
 *                          after an upgrade)
 *   anything else        → error\n, then EOF
 * A peer of another uid gets error\n and is disconnected (refuseConnection:
 * within a second, whatever it does).
 */
import { Socket } from 'node:net';
import { crypto } from '../internal/builtins.ts';
import { closeQuietly, native, type SeqpacketServer } from '../internal/native.ts';
import { adoptConnection, peerOf, peerPolicy, refuseConnection, type PeerCredentials } from '../internal/peer-access.ts';
import { MAX_DRAINING_CHAIN, type DrainingAncestor } from '../wire/protocol.ts';

export { MAX_DRAINING_CHAIN, type DrainingAncestor };

export const MAX_LINE_BYTES = 128;
/** A connection that has not sent its line by then is closed. */
const IDLE_TIMEOUT_MS = 5_000;
const BACKLOG = 16;

/** What the generation behind an endpoint answers. */
export interface RetireHandler {
  state(): string;
  /** True when this generation drains after an upgrade and was told to finish now. */
  finish(peer: PeerCredentials): boolean;
}

/** Root and this process's uid: the only peers either side of an endpoint believes. */
const sameUser = peerPolicy();

export class RetireEndpoint {
  readonly name: string;
  readonly #server: SeqpacketServer;
  readonly #open = new Set<Socket>();
  #closed = false;

  /** Takes ownership of the listening `fd` when it returns. */
  private constructor(name: string, fd: number, handler: RetireHandler) {
    this.name = name;
    this.#server = new (native().SeqpacketServer)(fd, { onConnection: (accepted) => this.#serve(accepted, handler), onError: () => {} });
    // Never what keeps a generation alive.
    this.#server.unref();
    this.#server.start();
  }

  static async open(handler: RetireHandler): Promise<RetireEndpoint> {
    const name = `ecdysis-retire-${crypto().randomBytes(16).toString('hex')}`;
    const fd = native().listenUnix(`\0${name}`, BACKLOG);
    try {
      return new RetireEndpoint(name, fd, handler);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
  }

  /** Stop answering; connections waiting for this generation to finish see EOF. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
    for (const socket of this.#open) socket.end();
    this.#open.clear();
  }

  #serve(fd: number, handler: RetireHandler): void {
    if (this.#closed) return closeQuietly(fd);
    const peer = peerOf(fd);
    if (!peer) return closeQuietly(fd);
    if (!sameUser.admits(peer)) return refuseConnection(fd, 'error\n');
    const socket = adoptConnection(fd);
    if (!socket) return;
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    let line = '';
    const onData = (chunk: Buffer) => {
      line += chunk.toString('latin1');
      const end = line.indexOf('\n');
      if (end === -1) {
        if (line.length > MAX_LINE_BYTES) {
          socket.off('data', onData);
          socket.end('error\n');
        }
        return;
      }
      socket.off('data', onData);
      socket.setTimeout(0);
      const request = line.slice(0, end);
      if (request === 'status') return void socket.end(`state ${handler.state()}\n`);
      if (/^finish \d{1,10}$/.test(request)) {
        if (handler.finish(peer)) {
          // EOF follows when this generation is drained (close()).
          if (this.#closed) socket.end('finishing\n');
          else socket.write('finishing\n');
        } else {
          socket.end(`refused ${handler.state()}\n`);
        }
        return;
      }
      socket.end('error\n');
    };
    socket.on('data', onData);
  }
}

/** What asking an ancestor came to. */
export type AncestorAnswer =
  /** Its endpoint is closed: it is drained, or dead. */
  | { kind: 'gone' }
  | { kind: 'state'; state: string }
  /** Told to finish: `finished` once it is drained, false when it did not answer in time. */
  | { kind: 'finishing'; finished: boolean }
  | { kind: 'refused'; state: string }
  /** No answer in time, or one this version does not understand. */
  | { kind: 'unknown' };

/** How an older release's endpoint is bound: Node 20 pads an abstract name with NULs to the whole sun_path. */
const SUN_PATH_BYTES = 108;

/** Whether a process with this pid exists that this process could signal (its own user's, or any as root). */
function mayBeAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    // ESRCH: no such process. EPERM: another user's, so not a generation of ours.
    return false;
  }
}

/**
 * A connection to the ancestor itself, or what to make of it when there is
 * none: `gone` when nothing listens at its name or something else than that
 * process does (a squatter that bound a drained generation's name), `unknown`
 * when its backlog is full.
 */
function connectAncestor(ancestor: DrainingAncestor): number | AncestorAnswer {
  if (!mayBeAlive(ancestor.pid)) return { kind: 'gone' };
  const exact = `\0${ancestor.endpoint}`;
  for (const address of [exact, exact.padEnd(SUN_PATH_BYTES, '\0')]) {
    let fd: number;
    try {
      fd = native().connectUnix(address, 'stream');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ECONNREFUSED' || code === 'ENOENT') continue;
      return { kind: 'unknown' };
    }
    const peer = peerOf(fd);
    if (peer && peer.pid === ancestor.pid && sameUser.admits(peer)) return fd;
    closeQuietly(fd);
    return { kind: 'gone' };
  }
  return { kind: 'gone' };
}

/**
 * Ask an ancestor its state, or tell it to finish and wait (up to `timeoutMs`
 * in all) until it is drained. Nothing is sent, and nothing believed, unless
 * the process at the other end is that ancestor (SO_PEERCRED).
 */
export function askAncestor(ancestor: DrainingAncestor, request: 'status' | 'finish', timeoutMs: number): Promise<AncestorAnswer> {
  const connected = connectAncestor(ancestor);
  if (typeof connected !== 'number') return Promise.resolve(connected);
  let socket: Socket;
  try {
    socket = new Socket({ fd: connected, readable: true, writable: true });
  } catch {
    closeQuietly(connected);
    return Promise.resolve({ kind: 'unknown' });
  }
  return new Promise((resolve) => {
    let answer = '';
    let settled = false;
    const done = (result: AncestorAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => {
      if (answer.startsWith('finishing\n')) done({ kind: 'finishing', finished: false });
      else done({ kind: 'unknown' });
    }, timeoutMs);
    socket.on('error', () => done({ kind: 'unknown' }));
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('latin1');
      if (answer.length > MAX_LINE_BYTES * 2) done({ kind: 'unknown' });
    });
    socket.on('end', () => {
      const line = answer.split('\n')[0] ?? '';
      if (line === 'finishing') return done({ kind: 'finishing', finished: true });
      const [word, state] = line.split(' ');
      if (word === 'state' && state) return done({ kind: 'state', state });
      if (word === 'refused' && state) return done({ kind: 'refused', state });
      done({ kind: 'unknown' });
    });
    socket.write(request === 'status' ? 'status\n' : `finish ${process.pid}\n`);
  });
}
