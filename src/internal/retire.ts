/**
 * Upgrades while older generations still drain (`maxDrainingGenerations` > 1).
 *
 * Each generation that upgrades under that option opens a retire endpoint: a
 * Unix stream socket in the abstract namespace, named by 128 random bits, so
 * that only the generations it named it to (its descendants, through hello's
 * `draining` chain) can reach it, and it is gone, with no file left behind,
 * the moment the generation closes it or dies. A refused connection means the
 * generation is no longer draining: no pid is ever signalled, so a reused pid
 * is never hit.
 *
 * Protocol: one request line, one answer line, both at most
 * {@link MAX_LINE_BYTES} bytes; peers are checked by SO_PEERCRED first (this
 * uid or root only).
 *   status\n             → state <state>\n, then EOF
 *   finish <pid>\n       → finishing\n, then EOF once this generation is drained
 *                          (or refused <state>\n, then EOF, when it is not draining
 *                          after an upgrade)
 *   anything else        → error\n, then EOF
 */
import { crypto } from './builtins.ts';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { native, type PeerCredentials } from './native.ts';

export const MAX_LINE_BYTES = 128;
/** A connection that has not sent its line by then is closed. */
const IDLE_TIMEOUT_MS = 5_000;
/** The most ancestors a hello may name (a bound on what a parent can make us do). */
export const MAX_DRAINING_CHAIN = 64;
const NAME_PATTERN = /^ecdysis-retire-[0-9a-f]{32}$/;

/** A generation that upgraded while allowed to keep draining, as its descendants know it. */
export interface DrainingAncestor {
  generation: number;
  pid: number;
  /** Its retire endpoint's abstract name, without the leading NUL. */
  endpoint: string;
}

export function isEndpointName(name: unknown): name is string {
  return typeof name === 'string' && NAME_PATTERN.test(name);
}

/** What the generation behind an endpoint answers. */
export interface RetireHandler {
  state(): string;
  /** True when this generation drains after an upgrade and was told to finish now. */
  finish(peer: PeerCredentials): boolean;
}

export class RetireEndpoint {
  readonly name: string;
  readonly #server: Server;
  readonly #open = new Set<Socket>();
  readonly #allowed = new Set([0, process.getuid?.() ?? 0]);
  #closed = false;

  private constructor(name: string, server: Server) {
    this.name = name;
    this.#server = server;
  }

  static async open(handler: RetireHandler): Promise<RetireEndpoint> {
    const name = `ecdysis-retire-${crypto().randomBytes(16).toString('hex')}`;
    const server = createServer();
    const endpoint = new RetireEndpoint(name, server);
    server.on('connection', (socket) => endpoint.#serve(socket, handler));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path: `\0${name}`, backlog: 16 }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // Never what keeps a generation alive.
    server.unref();
    server.on('error', () => {});
    return endpoint;
  }

  /** Stop answering; connections waiting for this generation to finish see EOF. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
    for (const socket of this.#open) socket.end();
    this.#open.clear();
  }

  #serve(socket: Socket, handler: RetireHandler): void {
    socket.unref();
    socket.on('error', () => {});
    if (this.#closed) return void socket.destroy();
    let peer: PeerCredentials;
    try {
      peer = native().peerCredentials((socket as unknown as { _handle: { fd: number } })._handle.fd);
    } catch {
      return void socket.destroy();
    }
    if (!this.#allowed.has(peer.uid)) return void socket.end('error\n');
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

/**
 * Ask an ancestor its state, or tell it to finish and wait (up to `timeoutMs`
 * in all) until it is drained.
 */
export function askAncestor(ancestor: DrainingAncestor, request: 'status' | 'finish', timeoutMs: number): Promise<AncestorAnswer> {
  return new Promise((resolve) => {
    const socket = connect({ path: `\0${ancestor.endpoint}` });
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
    socket.on('error', (err: NodeJS.ErrnoException) => {
      done(err.code === 'ECONNREFUSED' || err.code === 'ENOENT' ? { kind: 'gone' } : { kind: 'unknown' });
    });
    socket.on('connect', () => socket.write(request === 'status' ? 'status\n' : `finish ${process.pid}\n`));
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
  });
}
