/**
 * Control sockets: triggers that answer. A Unix stream socket, created 0600 and
 * handed to every later generation like a listener (same path, never unlinked
 * on an upgrade, so a client can ask the new generation right after), served
 * only while this generation serves. Peers are checked by SO_PEERCRED before a
 * byte is read; every input is bounded; nothing a client does blocks serving or
 * the next trigger. See control-protocol.ts for the protocol.
 */
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { debuglog } from 'node:util';
import { EcdysisError, invalidOption } from '../errors.ts';
import { closeQuietly, native, type PeerCredentials, type SeqpacketServer } from '../internal/native.ts';
import type { TriggerAction } from './signals.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import { unix } from '../kinds/unix.ts';
import { bindPath, keyPath, reapplyFileMode, unlinkIfSame } from '../kinds/unix-path.ts';
import { BaseListener, type ListenerConfig } from '../listeners/base-listener.ts';
import { CONTROL_COMMANDS, IDLE_TIMEOUT_MS, MAX_CONNECTIONS, MAX_LINE_BYTES, encodeReply, errorReply, type ControlCommand } from './control-protocol.ts';

const debug = debuglog('ecdysis');

export interface ControlSocketConfig {
  /** Absolute, or an abstract name starting with '\0'. */
  path: string;
  actions: TriggerAction[];
  mode: number;
  group: string | number | undefined;
  allowUids: number[];
}

/** What a control socket asks of the generation. */
export interface ControlHandler {
  readonly generation: number;
  /**
   * Resolves with the new pid once the upgrade is committed; `answer` is called
   * with it first, before this generation's `exit` resolves.
   */
  upgrade(reason: string, answer: (pid: number) => void): Promise<number>;
  stop(mode: 'stop' | 'partial-stop', reason: string): void;
  status(): Record<string, unknown>;
  refused(peer: PeerCredentials, reason: string): void;
}

const BACKLOG = 64;

export function controlRequest(config: ControlSocketConfig, handler: ControlHandler): ListenRequest<ControlListener> {
  return {
    spec: unix,
    name: undefined,
    systemd: undefined,
    key: `control:${keyPath(config.path)}`,
    numbered: false,
    address: { path: config.path },
    async create() {
      // The file is created with its mode and group (never the umask's, never by name after bind).
      const gid = config.group === undefined ? undefined : groupId(config.group);
      return bindPath(config.path, () => native().listenUnix(config.path, BACKLOG, 'stream', { mode: config.mode, ...(gid === undefined ? {} : { gid }) }));
    },
    async discard(created) {
      closeQuietly(created.fd);
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    adopt(socket) {
      reapplyFileMode(socket, config.mode, config.group === undefined ? undefined : groupId(config.group));
    },
    listener: (socket) => new ControlListener({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown: true }, config, handler),
  };
}

/** The gid of a group given by name (/etc/group) or number. */
function groupId(group: string | number): number {
  if (typeof group === 'number') return group;
  const line = readFileSync('/etc/group', 'utf8').split('\n').find((l) => l.startsWith(`${group}:`));
  const gid = line ? Number(line.split(':')[2]) : NaN;
  if (!Number.isInteger(gid)) throw invalidOption('group', 'is not a group of this system (/etc/group)', group);
  return gid;
}

/** A control socket: accepted fds come from the addon, so the peer is checked before Node reads a byte. */
export class ControlListener extends BaseListener<number> {
  readonly kind = 'unix' as const;
  readonly #config: ControlSocketConfig;
  readonly #handler: ControlHandler;
  readonly #allowed: Set<number>;
  readonly #open = new Set<Socket>();
  #server: SeqpacketServer | undefined;

  /** @internal */
  constructor(config: ListenerConfig, control: ControlSocketConfig, handler: ControlHandler) {
    super(config, MAX_CONNECTIONS);
    this.#config = control;
    this.#handler = handler;
    this.#allowed = new Set([0, process.getuid?.() ?? 0, ...control.allowUids]);
    // The listener is its own consumer: it serves whenever the generation does.
    this.feed.subscribe({ next: (fd) => this.#accept(fd), error: () => {}, complete: () => {} });
  }

  protected override discardItem(fd: number): void {
    closeQuietly(fd);
  }

  protected override startServing(fd: number): void {
    try {
      this.#server = new (native().SeqpacketServer)(fd, { onConnection: (accepted) => this.feed.push(accepted), onError: () => {} });
    } catch (err) {
      closeQuietly(fd);
      return this.fail(err as Error);
    }
    this.#server.start();
  }

  protected override stopServing(): void {
    this.#server?.close();
    this.#server = undefined;
  }

  #accept(fd: number): void {
    let peer: PeerCredentials;
    try {
      peer = native().peerCredentials(fd);
    } catch {
      return closeQuietly(fd);
    }
    let socket: Socket;
    try {
      socket = new Socket({ fd, readable: true, writable: true });
    } catch {
      return closeQuietly(fd);
    }
    // A control connection never keeps a finished process alive (a client
    // waiting for a stop to finish sees EOF when it exits).
    socket.unref();
    socket.on('error', () => {});
    if (!this.#allowed.has(peer.uid)) {
      debug('control socket %s: uid %d (pid %d) refused', this.#config.path, peer.uid, peer.pid);
      this.#handler.refused(peer, `uid ${peer.uid} is not allowed`);
      socket.end(errorReply('ERR_ECDYSIS_CONTROL_DENIED', `uid ${peer.uid} may not use this control socket`));
      return;
    }
    if (this.#open.size >= MAX_CONNECTIONS) {
      socket.end(errorReply('ERR_ECDYSIS_CONTROL', `too many control connections (${MAX_CONNECTIONS}); try again`));
      return;
    }
    this.#open.add(socket);
    socket.once('close', () => this.#open.delete(socket));
    new ControlSession(socket, this.#config, this.#handler).start();
  }
}

/** One client: lines in, one JSON line out per command, in order, with bounds on everything. */
class ControlSession {
  readonly #socket: Socket;
  readonly #config: ControlSocketConfig;
  readonly #handler: ControlHandler;
  #buffered = '';
  #queue: Promise<void> = Promise.resolve();
  #busy = 0;

  constructor(socket: Socket, config: ControlSocketConfig, handler: ControlHandler) {
    this.#socket = socket;
    this.#config = config;
    this.#handler = handler;
  }

  start(): void {
    this.#socket.setEncoding('utf8');
    this.#socket.setTimeout(IDLE_TIMEOUT_MS, () => {
      // Idle between commands; a command in progress (an upgrade) may take long.
      if (this.#busy === 0) this.#socket.destroy();
    });
    this.#socket.on('data', (chunk: string) => this.#receive(chunk));
  }

  #receive(chunk: string): void {
    this.#buffered += chunk;
    let newline: number;
    while ((newline = this.#buffered.indexOf('\n')) !== -1) {
      const line = this.#buffered.slice(0, newline).trim();
      this.#buffered = this.#buffered.slice(newline + 1);
      if (line !== '') this.#enqueue(line);
    }
    if (Buffer.byteLength(this.#buffered) > MAX_LINE_BYTES) {
      this.#buffered = '';
      this.#socket.pause();
      this.#socket.end(errorReply('ERR_ECDYSIS_CONTROL', `a line longer than ${MAX_LINE_BYTES} bytes`));
    }
  }

  #enqueue(line: string): void {
    this.#busy++;
    this.#queue = this.#queue
      .then(() => this.#run(line))
      .catch((err: Error) => errorReply('ERR_ECDYSIS_CONTROL', err.message))
      .then((reply) => {
        this.#busy--;
        if (reply) this.#send(reply);
      });
  }

  #send(reply: string): void {
    if (!this.#socket.destroyed && this.#socket.writable) this.#socket.write(reply);
  }

  async #run(line: string): Promise<string | undefined> {
    const command = line as ControlCommand;
    if (!CONTROL_COMMANDS.includes(command)) {
      return errorReply('ERR_ECDYSIS_CONTROL', `unknown command ${JSON.stringify(line.slice(0, 64))}; commands: ${CONTROL_COMMANDS.join(', ')}`);
    }
    if (command === 'status') return encodeReply({ ok: true, ...this.#handler.status() });
    if (!this.#config.actions.includes(command)) {
      return errorReply('ERR_ECDYSIS_CONTROL', `this control socket does not take "${command}" (it takes: ${['status', ...this.#config.actions].join(', ')})`);
    }
    if (command === 'upgrade') {
      const started = performance.now();
      try {
        // Answered at the commit, before anything the application awaits can
        // resolve: it may call process.exit() right after its drain.
        await this.#handler.upgrade('control socket', (pid) =>
          this.#send(encodeReply({ ok: true, pid, generation: this.#handler.generation + 1, elapsedMs: Math.round(performance.now() - started) })),
        );
        return undefined;
      } catch (err) {
        const error = err as EcdysisError;
        return errorReply(error.code ?? 'ERR_ECDYSIS_CONTROL', error.message);
      }
    }
    // The answer goes out first; the connection stays open until this process
    // exits, however long the drain (a client waiting for EOF knows it is gone).
    this.#socket.setTimeout(0);
    this.#send(encodeReply({ ok: true, pid: process.pid, mode: command }));
    this.#handler.stop(command, 'control socket');
    return undefined;
  }
}
