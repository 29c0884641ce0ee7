/**
 * The CLI's side of the control socket protocol (control-protocol.ts): commands
 * on one connection, one JSON line back for each; for a stop, optionally, the
 * end of the connection, which the server holds until its process exits.
 *
 * The addon connects: an abstract name (`@name`) is used with its exact length,
 * as the library binds it. Node 20's net.connect pads it with NULs to the whole
 * sun_path, which is another abstract address (one anybody may bind); Node 22
 * and 24 do not pad. Before a byte of the answer is read, the server's
 * SO_PEERCRED is checked (trust.ts): an answer counts only from a process
 * allowed to give it. In local mode (off Linux, or ECDYSIS_LOCAL=1) there is
 * neither the addon nor SO_PEERCRED: Node connects, to filesystem paths only,
 * and the socket file's owner stands for the server (whoever bound it owns
 * it), believed under the same rules (trust.ts).
 */
import { statSync } from 'node:fs';
import { Socket } from 'node:net';
import { localMode } from '../internal/local-mode.ts';
import { native, type NativeSystemError, type PeerCredentials } from '../internal/native.ts';
import { MAX_LINE_BYTES, type ControlCommand, type ControlReply } from '../wire/control-protocol.ts';
import { printable } from './printable.ts';
import { serverProblem } from './trust.ts';

export class ConnectionError extends Error {
  override name = 'ConnectionError';
}

/** The server closed the connection before it answered. */
export class NoAnswerError extends ConnectionError {
  override name = 'NoAnswerError';
}

/** The process serving the socket is not one whose answers count. */
export class UntrustedServerError extends ConnectionError {
  override name = 'UntrustedServerError';
}

export interface ConnectOptions {
  /** Uids believed besides root, the CLI's own and the socket file's owner (--server-uid). */
  serverUids?: readonly number[];
}

/** How much of an answer without a newline is read before it is called garbage. */
const MAX_ANSWER_BYTES = MAX_LINE_BYTES * 16;

/** One connection to a control socket, from a server that passed the SO_PEERCRED check. */
export class ControlConnection {
  /** The server's credentials (SO_PEERCRED: the process that called listen(), i.e. generation 0's pid). */
  readonly server: PeerCredentials;
  /** Resolves once the connection is closed, by either side. */
  readonly closed: Promise<void>;
  readonly #path: string;
  readonly #socket: Socket;
  #buffered = '';
  #ended = false;
  #failure: Error | undefined;
  #wake: (() => void) | undefined;

  /**
   * Connect to `path` (a filesystem path, or `@name` for an abstract name).
   *
   * @throws {ConnectionError} nothing listens there (ECONNREFUSED, ENOENT) or its
   * queue is full (EAGAIN); UntrustedServerError when its server does not count.
   */
  static open(path: string, options: ConnectOptions = {}): ControlConnection {
    if (localMode()) return ControlConnection.#openLocal(path, options);
    const address = path.startsWith('@') ? `\0${path.slice(1)}` : path;
    let fd: number;
    try {
      fd = native().connectUnix(address, 'stream');
    } catch (err) {
      const e = err as NativeSystemError;
      throw new ConnectionError(`cannot reach the control socket ${path}: ${e.code ?? e.message}`);
    }
    let server: PeerCredentials;
    try {
      server = native().peerCredentials(fd);
      const problem = serverProblem(path, server, options.serverUids ?? []);
      if (problem) throw new UntrustedServerError(`not talking to ${path}: ${problem}`);
    } catch (err) {
      native().close(fd);
      throw err;
    }
    return new ControlConnection(path, new Socket({ fd, readable: true, writable: true }), server);
  }

  /** Local mode: Node connects; the file's owner is who is believed to serve it (its pid is unknown: 0). */
  static #openLocal(path: string, options: ConnectOptions): ControlConnection {
    if (path.startsWith('@')) throw new ConnectionError(`cannot reach the control socket ${path}: abstract names need Linux (this command runs in local mode)`);
    let server: PeerCredentials;
    try {
      const st = statSync(path);
      server = { pid: 0, uid: st.uid, gid: st.gid };
    } catch (err) {
      throw new ConnectionError(`cannot reach the control socket ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    const problem = serverProblem(path, server, options.serverUids ?? []);
    if (problem) throw new UntrustedServerError(`not talking to ${path}: ${problem}`);
    const socket = new Socket();
    const connection = new ControlConnection(path, socket, server);
    socket.connect(path);
    return connection;
  }

  private constructor(path: string, socket: Socket, server: PeerCredentials) {
    this.#path = path;
    this.server = server;
    this.#socket = socket;
    this.closed = new Promise<void>((resolve) => this.#socket.once('close', () => resolve()));
    this.#socket.setEncoding('utf8');
    this.#socket.on('data', (chunk: string) => {
      this.#buffered += chunk;
      if (!this.#buffered.includes('\n') && this.#buffered.length > MAX_ANSWER_BYTES) this.#fail(new ConnectionError('the answer is not a line of JSON'));
      this.#wake?.();
    });
    this.#socket.on('error', (err: NodeJS.ErrnoException) =>
      // Local mode connects asynchronously: a refusal arrives here, said as the addon's connect says it.
      this.#fail(new ConnectionError(err.syscall === 'connect' ? `cannot reach the control socket ${path}: ${err.code}` : `the connection to ${path} failed: ${err.code ?? err.message}`)),
    );
    this.#socket.on('end', () => this.#end());
    this.#socket.on('close', () => this.#end());
  }

  /**
   * Send `command`; resolve with its answer.
   *
   * @throws {NoAnswerError} the server closed first; ConnectionError for no
   * answer within `timeoutMs`, a broken connection, or an answer that is not JSON.
   */
  async ask(command: ControlCommand | `env ${string}`, timeoutMs: number): Promise<ControlReply> {
    this.#socket.write(`${command}\n`);
    const line = await this.#nextLine(timeoutMs);
    try {
      return JSON.parse(line) as ControlReply;
    } catch {
      throw new ConnectionError(`the answer is not JSON: ${printable(line.slice(0, 200))}`);
    }
  }

  close(): void {
    this.#socket.destroy();
  }

  /** The next line of the answer, or why there is none. One caller at a time. */
  #nextLine(timeoutMs: number): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        settle();
      }, timeoutMs);
      const settle = () => {
        const newline = this.#buffered.indexOf('\n');
        let outcome: string | Error;
        if (newline !== -1) {
          outcome = this.#buffered.slice(0, newline);
          this.#buffered = this.#buffered.slice(newline + 1);
        } else if (this.#failure) outcome = this.#failure;
        else if (this.#ended) outcome = new NoAnswerError(`${this.#path} closed the connection without an answer`);
        else if (timedOut) outcome = new ConnectionError(`no answer from ${this.#path} within ${timeoutMs} ms`);
        else return;
        clearTimeout(timer);
        this.#wake = undefined;
        if (typeof outcome === 'string') resolve(outcome);
        else reject(outcome);
      };
      this.#wake = settle;
      settle();
    });
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    this.#socket.destroy();
    this.#wake?.();
  }

  #end(): void {
    this.#ended = true;
    this.#wake?.();
  }
}

export interface Exchange {
  reply: ControlReply;
  /** Resolves when the server closes the connection (with `awaitClose`), or at once. */
  closed: Promise<void>;
  server: PeerCredentials;
}

/**
 * Send `command` on a new connection; resolve with the reply. Rejects with
 * ConnectionError (no socket, an untrusted server, no answer in time, garbage).
 * The connection is closed once the answer is in, unless `awaitClose` (a stop
 * that waits for the process to exit): the server would hold it open for more
 * commands until its idle timeout.
 */
export async function request(path: string, command: ControlCommand, timeoutMs: number, { awaitClose = false, serverUids }: { awaitClose?: boolean } & ConnectOptions = {}): Promise<Exchange> {
  const connection = ControlConnection.open(path, { serverUids });
  let reply: ControlReply;
  try {
    reply = await connection.ask(command, timeoutMs);
  } catch (err) {
    connection.close();
    throw err;
  }
  if (!awaitClose) connection.close();
  return { reply, closed: awaitClose ? connection.closed : Promise.resolve(), server: connection.server };
}
