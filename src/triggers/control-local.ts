/**
 * Control sockets in local mode (internal/local-mode.ts): the same protocol and
 * sessions (control-session.ts) on a Unix stream socket Node creates. Off Linux
 * there is no SO_PEERCRED, so who may use the socket is decided by its file
 * alone: its mode must let nobody but its owner (and root) connect, which is
 * the default 0600; a mode that lets group or others connect is refused rather
 * than admit peers the same options would refuse on Linux. allowUids and
 * allowGids then admit nobody more, and say so once. The bounds are those of
 * the protocol, less the per-uid ones (no uid is known): MAX_CONNECTIONS at once.
 */
import type { Socket } from 'node:net';
import { unsupportedInLocalMode, warnLocalOnce } from '../internal/local-mode.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import { listenLocalUnix } from '../kinds/local.ts';
import { unlinkIfSame } from '../kinds/unix-path.ts';
import { BaseListener, type ListenerConfig } from '../listeners/base-listener.ts';
import { LocalStreamSocket } from '../listeners/local-socket.ts';
import { MAX_CONNECTIONS, MAX_UNREAD_BYTES, errorReply } from '../wire/control-protocol.ts';
import { ControlSession, type ControlHandler } from './control-session.ts';
import { BACKLOG, controlIdentity, type ControlSocketConfig } from './control-socket.ts';

/** How long a turned-away connection may take to read its line. */
const REFUSAL_LINGER_MS = 1_000;

export function localControlRequest(config: ControlSocketConfig, handler: ControlHandler, gid: () => number | undefined): ListenRequest<LocalControlListener> {
  if ((config.mode & 0o022) !== 0) {
    throw unsupportedInLocalMode(
      `the control socket ${config.path} cannot have mode 0${config.mode.toString(8)}`,
      'without SO_PEERCRED (Linux only) it cannot check who connects, so only its owner may be able to: give it mode 0600 (the default) or 0700',
    );
  }
  if (config.allowUids.length > 0 || config.allowGids.length > 0) {
    warnLocalOnce('control.allow', `allowUids and allowGids of the control socket ${config.path} admit nobody: without SO_PEERCRED only its owner and root can connect (mode 0${config.mode.toString(8)})`);
  }
  return {
    ...controlIdentity(config),
    create: () => listenLocalUnix(config.path, { backlog: BACKLOG, allowHalfOpen: false, mode: config.mode, gid: gid(), highWaterMark: MAX_UNREAD_BYTES }),
    async discard(created) {
      created.local?.close();
      if (created.path && created.pathInode !== undefined) await unlinkIfSame(created.path, created.pathInode);
    },
    listener: (socket) => {
      if (!(socket.local instanceof LocalStreamSocket)) throw new Error(`ecdysis: internal error: local control socket ${socket.key} without its server`);
      return new LocalControlListener({ key: socket.key, fd: undefined, inherited: false, stopOnShutdown: true }, socket.local, config, handler);
    },
  };
}

/** A control socket of local mode: its connections come from Node's server, served whenever the generation serves. */
export class LocalControlListener extends BaseListener<Socket> {
  readonly kind = 'unix' as const;
  readonly #local: LocalStreamSocket;
  readonly #config: ControlSocketConfig;
  readonly #handler: ControlHandler;
  #open = 0;

  /** @internal */
  constructor(config: ListenerConfig, local: LocalStreamSocket, control: ControlSocketConfig, handler: ControlHandler) {
    super(config, MAX_CONNECTIONS);
    this.#local = local;
    this.#config = control;
    this.#handler = handler;
    // The listener is its own consumer: it serves whenever the generation does.
    this.feed.subscribe({ next: (socket) => this.#accept(socket), error: () => {}, complete: () => {} });
  }

  protected override discardItem(socket: Socket): void {
    socket.destroy();
  }

  protected override startServing(): void {
    this.#local.attachServer((socket) => this.feed.push(socket), () => {});
  }

  protected override stopServing(): void {
    this.#local.detach();
  }

  #accept(socket: Socket): void {
    // A control connection never keeps a finished process alive, and its errors end it quietly.
    socket.unref();
    socket.on('error', () => {});
    if (this.#open >= MAX_CONNECTIONS) return turnAway(socket, errorReply('ERR_ECDYSIS_CONTROL', `too many control connections (${MAX_CONNECTIONS}); try again`));
    this.#open++;
    socket.once('close', () => this.#open--);
    new ControlSession(socket, this.#config.actions, this.#handler).start();
  }
}

/** One error line, this side shut, and the connection destroyed when the client closes or after a second. */
function turnAway(socket: Socket, line: string): void {
  const timer = setTimeout(() => socket.destroy(), REFUSAL_LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.resume();
  socket.end(line);
}
