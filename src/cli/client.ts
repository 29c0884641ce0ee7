/**
 * The CLI's side of the control socket protocol (control-protocol.ts): one
 * command, one JSON line back; for a stop, optionally, the end of the
 * connection, which the server holds until its process exits.
 */
import { connect } from 'node:net';
import { MAX_LINE_BYTES, type ControlCommand, type ControlReply } from '../triggers/control-protocol.ts';

export class ConnectionError extends Error {
  override name = 'ConnectionError';
}

export interface Exchange {
  reply: ControlReply;
  /** Resolves when the server closes the connection (with `awaitClose`), or at once. */
  closed: Promise<void>;
}

/**
 * Send `command`; resolve with the reply. Rejects with ConnectionError (no
 * socket, no answer in time, garbage). The connection is closed once the
 * answer is in, unless `awaitClose` (a stop that waits for the process to
 * exit): the server would hold it open for more commands until its idle timeout.
 */
export function request(path: string, command: ControlCommand, timeoutMs: number, { awaitClose = false } = {}): Promise<Exchange> {
  return new Promise((resolve, reject) => {
    const socket = connect(path.startsWith('@') ? `\0${path.slice(1)}` : path);
    let buffered = '';
    let answered = false;
    const closed = new Promise<void>((done) => socket.once('close', () => done()));
    const timer = setTimeout(() => fail(new ConnectionError(`no answer from ${path} within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${command}\n`));
    socket.on('error', (err: NodeJS.ErrnoException) => fail(new ConnectionError(`cannot reach the control socket ${path}: ${err.code ?? err.message}`)));
    socket.on('data', (chunk: string) => {
      if (answered) return;
      buffered += chunk;
      const newline = buffered.indexOf('\n');
      if (newline === -1) {
        if (buffered.length > MAX_LINE_BYTES * 16) fail(new ConnectionError('the answer is not a line of JSON'));
        return;
      }
      answered = true;
      clearTimeout(timer);
      if (!awaitClose) socket.destroy();
      try {
        resolve({ reply: JSON.parse(buffered.slice(0, newline)) as ControlReply, closed });
      } catch {
        fail(new ConnectionError(`the answer is not JSON: ${buffered.slice(0, 200)}`));
      }
    });
    socket.on('close', () => {
      if (!answered) fail(new ConnectionError(`${path} closed the connection without an answer`));
    });
  });
}
