/**
 * One control-socket client: lines in, one JSON line out per command, in
 * order. Everything it can make the server hold is bounded (control-protocol.ts):
 * one command runs at a time, reading stops while it runs or while the client
 * leaves answers unread, and a client that sends commands far ahead of reading
 * their answers is closed. A client that pipelines without reading therefore
 * costs a few KiB here and blocks in its own writes.
 */
import type { Socket } from 'node:net';
import type { EcdysisError } from '../errors.ts';
import type { PeerCredentials } from '../internal/peer-access.ts';
import type { TriggerAction } from './signals.ts';
import {
  CONTROL_COMMANDS,
  ENV_NAME,
  IDLE_TIMEOUT_MS,
  MAX_ENV_BYTES,
  MAX_ENV_VARIABLES,
  MAX_LINE_BYTES,
  MAX_QUEUED_COMMANDS,
  UPGRADE_COMMANDS,
  encodeReply,
  errorReply,
  type ControlCommand,
} from '../wire/control-protocol.ts';

/** What a control socket asks of the generation. */
export interface ControlHandler {
  readonly generation: number;
  /**
   * Resolves with the new pid once the upgrade is committed; `answer` is called
   * with it first, before this generation's `exit` resolves.
   */
  upgrade(reason: string, answer: (pid: number) => void, env?: Record<string, string | undefined>): Promise<number>;
  /** Operator rollback (rollback.ts): resolves with the pid that serves again; `answer` first. */
  rollback(answer: (pid: number) => void): Promise<number>;
  stop(mode: 'stop' | 'partial-stop', reason: string): void;
  status(): Record<string, unknown>;
  refused(peer: PeerCredentials, reason: string): void;
}

/** How long an error line may take to leave before the connection is destroyed anyway. */
const CLOSE_FALLBACK_MS = 1_000;

export class ControlSession {
  readonly #socket: Socket;
  readonly #actions: readonly TriggerAction[];
  readonly #handler: ControlHandler;
  /** Received text after the last newline. */
  #partial = '';
  /** Complete commands waiting for the one before them to be answered. */
  readonly #waiting: string[] = [];
  #running = false;
  /** The last answer filled the socket's write buffer: nothing more runs until 'drain'. */
  #unread = false;
  /** A stop was answered: the connection stays open until the process exits. */
  #held = false;
  /** What is wrong with the connection: said, and the connection ended, once the commands before it are answered. */
  #failure: string | undefined;
  #done = false;
  readonly #idle: NodeJS.Timeout;

  /** The peer may set the next upgrade's environment (root or this process's uid). */
  readonly #mayChangeEnv: boolean;
  /** `env` lines received for this connection's next upgrade. */
  #env: Record<string, string | undefined> = {};

  constructor(socket: Socket, actions: readonly TriggerAction[], handler: ControlHandler, peer?: PeerCredentials) {
    this.#socket = socket;
    this.#actions = actions;
    this.#handler = handler;
    this.#mayChangeEnv = peer !== undefined && (peer.uid === 0 || peer.uid === process.getuid?.());
    // Idle means: no command running and none arrived. Only a complete,
    // non-empty command re-arms it (an empty line every few seconds, or a line
    // trickled in a byte at a time, does not keep a connection).
    this.#idle = setTimeout(() => {
      if (!this.#running && !this.#held) this.#socket.destroy();
    }, IDLE_TIMEOUT_MS);
    this.#idle.unref();
  }

  start(): void {
    this.#socket.setEncoding('utf8');
    this.#socket.on('data', (chunk: string) => this.#receive(chunk));
    this.#socket.on('drain', () => {
      this.#unread = false;
      this.#next();
    });
    this.#socket.once('close', () => {
      this.#done = true;
      clearTimeout(this.#idle);
    });
  }

  #receive(chunk: string): void {
    if (this.#done || this.#failure !== undefined) return;
    const text = this.#partial + chunk;
    let start = 0;
    let newline: number;
    while ((newline = text.indexOf('\n', start)) !== -1) {
      const line = text.slice(start, newline);
      start = newline + 1;
      if (line.length > MAX_LINE_BYTES || Buffer.byteLength(line) > MAX_LINE_BYTES) return this.#fail(`a line longer than ${MAX_LINE_BYTES} bytes`);
      const command = line.trim();
      if (command === '') continue;
      if (this.#waiting.length >= MAX_QUEUED_COMMANDS) {
        return this.#fail(`more than ${MAX_QUEUED_COMMANDS} commands sent ahead of their answers; read each answer before sending more`);
      }
      this.#waiting.push(command);
      this.#touch();
    }
    this.#partial = text.slice(start);
    if (this.#partial.length > MAX_LINE_BYTES || Buffer.byteLength(this.#partial) > MAX_LINE_BYTES) return this.#fail(`a line longer than ${MAX_LINE_BYTES} bytes`);
    this.#next();
  }

  /** Nothing more is read: the commands before the bad input are answered, then the error, then the end. */
  #fail(message: string): void {
    this.#failure = message;
    this.#partial = '';
    this.#socket.pause();
    this.#next();
  }

  /** Run the next waiting command, if nothing runs and the client has read enough of what it was sent. */
  #next(): void {
    if (this.#done || this.#running) return;
    if (this.#unread) return void this.#socket.pause();
    const line = this.#waiting.shift();
    if (line === undefined) {
      if (this.#failure !== undefined) return this.#close(this.#failure);
      return void this.#socket.resume();
    }
    this.#running = true;
    this.#socket.pause();
    this.#touch();
    void this.#run(line)
      .catch((err: Error) => errorReply('ERR_ECDYSIS_CONTROL', err.message))
      .then((reply) => {
        this.#running = false;
        this.#touch();
        if (reply) this.#send(reply);
        this.#next();
      });
  }

  /** A command arrived or finished: the idle time starts again. */
  #touch(): void {
    if (!this.#done && !this.#held) this.#idle.refresh();
  }

  /** `env {...}`: variables for this connection's next upgrade. */
  #setEnv(text: string): string {
    if (!this.#actions.includes('upgrade')) return errorReply('ERR_ECDYSIS_CONTROL', 'this control socket does not take "upgrade", so neither "env"');
    if (!this.#mayChangeEnv) return errorReply('ERR_ECDYSIS_CONTROL_DENIED', 'only root and the service\'s own user may change the next generation\'s environment');
    let variables: unknown;
    try {
      variables = JSON.parse(text);
    } catch {
      return errorReply('ERR_ECDYSIS_CONTROL', 'env takes a JSON object of strings (or null to remove a variable)');
    }
    if (typeof variables !== 'object' || variables === null || Array.isArray(variables)) return errorReply('ERR_ECDYSIS_CONTROL', 'env takes a JSON object of strings (or null to remove a variable)');
    const next = { ...this.#env };
    for (const [name, value] of Object.entries(variables as Record<string, unknown>)) {
      if (!ENV_NAME.test(name)) return errorReply('ERR_ECDYSIS_CONTROL', `${JSON.stringify(name.slice(0, 64))} is not an environment variable's name`);
      if (value !== null && (typeof value !== 'string' || value.includes('\0'))) return errorReply('ERR_ECDYSIS_CONTROL', `env ${name}: a string without NUL, or null`);
      next[name] = value ?? undefined;
    }
    const bytes = Object.entries(next).reduce((n, [name, value]) => n + Buffer.byteLength(name) + Buffer.byteLength(value ?? ''), 0);
    if (Object.keys(next).length > MAX_ENV_VARIABLES || bytes > MAX_ENV_BYTES) {
      return errorReply('ERR_ECDYSIS_CONTROL', `at most ${MAX_ENV_VARIABLES} variables and ${MAX_ENV_BYTES} bytes of environment per upgrade`);
    }
    this.#env = next;
    return encodeReply({ ok: true, variables: Object.keys(next) });
  }

  #send(reply: string): void {
    if (this.#done || this.#socket.destroyed || !this.#socket.writable) return;
    if (!this.#socket.write(reply)) this.#unread = true;
  }

  /** An error about the connection itself: its line, then the end (destroyed within a second, whatever the client does). */
  #close(message: string): void {
    this.#done = true;
    clearTimeout(this.#idle);
    const socket = this.#socket;
    // The line, then this side shut: what the client still sends is read and
    // dropped (closing with it unread would reset the connection, and a client
    // busy writing could lose the line), until it closes its side.
    socket.end(errorReply('ERR_ECDYSIS_CONTROL', message));
    socket.removeAllListeners('data');
    socket.on('data', () => {});
    socket.once('end', () => socket.destroy());
    socket.resume();
    // A client that reads nothing, or never stops writing, does not keep the connection either.
    const fallback = setTimeout(() => socket.destroy(), CLOSE_FALLBACK_MS);
    fallback.unref();
    socket.once('close', () => clearTimeout(fallback));
  }

  async #run(line: string): Promise<string | undefined> {
    if (line.startsWith('env ')) return this.#setEnv(line.slice(4));
    const command = line as ControlCommand;
    if (!CONTROL_COMMANDS.includes(command)) {
      return errorReply('ERR_ECDYSIS_CONTROL', `unknown command ${JSON.stringify(line.slice(0, 64))}; commands: ${CONTROL_COMMANDS.join(', ')}`);
    }
    if (command === 'status') return encodeReply({ ok: true, ...this.#handler.status() });
    if (!this.#actions.includes(UPGRADE_COMMANDS.includes(command) ? 'upgrade' : (command as TriggerAction))) {
      return errorReply('ERR_ECDYSIS_CONTROL', `this control socket does not take "${command}" (it takes: ${['status', ...this.#actions].join(', ')})`);
    }
    if (command === 'upgrade' || command === 'rollback') {
      const started = performance.now();
      try {
        // Answered at the commit, before anything the application awaits can
        // resolve: it may call process.exit() right after its drain.
        if (command === 'rollback') {
          await this.#handler.rollback((pid) => this.#send(encodeReply({ ok: true, pid, generation: this.#handler.generation - 1 })));
          return undefined;
        }
        const env = this.#env;
        this.#env = {};
        await this.#handler.upgrade(
          'control socket',
          (pid) => this.#send(encodeReply({ ok: true, pid, generation: this.#handler.generation + 1, elapsedMs: Math.round(performance.now() - started) })),
          Object.keys(env).length > 0 ? env : undefined,
        );
        return undefined;
      } catch (err) {
        const error = err as EcdysisError;
        return errorReply(error.code ?? 'ERR_ECDYSIS_CONTROL', error.message);
      }
    }
    // The answer goes out first; the connection stays open until this process
    // exits, however long the drain (a client waiting for EOF knows it is gone).
    this.#held = true;
    clearTimeout(this.#idle);
    this.#send(encodeReply({ ok: true, pid: process.pid, mode: command }));
    this.#handler.stop(command, 'control socket');
    return undefined;
  }
}
