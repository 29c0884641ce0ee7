/**
 * Control sockets: triggers that answer. A Unix stream socket, created 0600 and
 * handed to every later generation like a listener (same path, never unlinked
 * on an upgrade, so a client can ask the new generation right after), served
 * only while this generation serves. Peers are checked by SO_PEERCRED before a
 * byte is read, and a refused one is disconnected within a second; every input is
 * bounded, per connection and per uid (control-protocol.ts); nothing a client
 * does blocks serving or the next trigger. See control-session.ts for one
 * client's commands.
 */
import { readFileSync } from 'node:fs';
import { debuglog } from 'node:util';
import { invalidOption } from '../errors.ts';
import { closeQuietly, native, type SeqpacketServer } from '../internal/native.ts';
import { adoptConnection, peerOf, peerPolicy, refuseConnection, type PeerCredentials, type PeerPolicy } from '../internal/peer-access.ts';
import type { TriggerAction } from './signals.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import { unix } from '../kinds/unix.ts';
import { bindPath, keyPath, reapplyFileMode, unlinkIfSame } from '../kinds/unix-path.ts';
import { BaseListener, type ListenerConfig } from '../listeners/base-listener.ts';
import { MAX_CONNECTIONS, MAX_CONNECTIONS_PER_UID, ROOT_RESERVED_CONNECTIONS, MAX_UNREAD_BYTES, errorReply } from '../wire/control-protocol.ts';
import { ControlSession, type ControlHandler } from './control-session.ts';

export type { ControlHandler };

const debug = debuglog('ecdysis');

export interface ControlSocketConfig {
  /** Absolute, or an abstract name starting with '\0'. */
  path: string;
  actions: TriggerAction[];
  mode: number;
  group: string | number | undefined;
  allowUids: number[];
  /** Peers whose gid (SO_PEERCRED: the effective gid they connected with) is one of these may use it too. */
  allowGids: number[];
}

export const BACKLOG = 64;

/** What identifies a control socket's request, whoever creates the socket (the addon, or Node in local mode). */
export function controlIdentity(config: ControlSocketConfig) {
  return { spec: unix, name: undefined, systemd: undefined, key: `control:${keyPath(config.path)}`, numbered: false, address: { path: config.path } } as const;
}

export function controlRequest(config: ControlSocketConfig, handler: ControlHandler): ListenRequest<ControlListener> {
  return {
    ...controlIdentity(config),
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
export function groupId(group: string | number): number {
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
  readonly #policy: PeerPolicy;
  readonly #refusals: RefusalReports;
  /** Open connections by uid. */
  readonly #open = new Map<number, number>();
  #total = 0;
  #server: SeqpacketServer | undefined;

  /** @internal */
  constructor(config: ListenerConfig, control: ControlSocketConfig, handler: ControlHandler) {
    super(config, MAX_CONNECTIONS);
    this.#config = control;
    this.#handler = handler;
    this.#policy = peerPolicy(control.allowUids, control.allowGids);
    this.#refusals = new RefusalReports(handler);
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
    this.#refusals.flush();
  }

  #accept(fd: number): void {
    const peer = peerOf(fd);
    if (!peer) return closeQuietly(fd);
    if (!this.#policy.admits(peer)) {
      debug('control socket %s: uid %d gid %d (pid %d) refused', this.#config.path, peer.uid, peer.gid, peer.pid);
      refuseConnection(fd, errorReply('ERR_ECDYSIS_CONTROL_DENIED', `uid ${peer.uid} may not use this control socket`));
      return this.#refusals.report(peer, `uid ${peer.uid} is not allowed`);
    }
    const mine = this.#open.get(peer.uid) ?? 0;
    if (mine >= MAX_CONNECTIONS_PER_UID) {
      return refuseConnection(fd, errorReply('ERR_ECDYSIS_CONTROL', `uid ${peer.uid} already has ${MAX_CONNECTIONS_PER_UID} control connections open; try again`));
    }
    if (this.#total >= MAX_CONNECTIONS - (peer.uid === 0 ? 0 : ROOT_RESERVED_CONNECTIONS)) {
      return refuseConnection(fd, errorReply('ERR_ECDYSIS_CONTROL', `too many control connections (${MAX_CONNECTIONS}); try again`));
    }
    // writableHighWaterMark: write() returns false, and this client is read no more, once its unread answers pass it.
    // Unreferenced: a control connection never keeps a finished process alive
    // (a client waiting for a stop to finish sees EOF when it exits).
    const socket = adoptConnection(fd, { writableHighWaterMark: MAX_UNREAD_BYTES });
    if (!socket) return;
    this.#total++;
    this.#open.set(peer.uid, mine + 1);
    socket.once('close', () => {
      this.#total--;
      const left = (this.#open.get(peer.uid) ?? 1) - 1;
      if (left === 0) this.#open.delete(peer.uid);
      else this.#open.set(peer.uid, left);
    });
    new ControlSession(socket, this.#config.actions, this.#handler, peer).start();
  }
}

/** How many refusals become events of their own in a window; the rest are summed up in one event at its end. */
const REFUSALS_REPORTED = 10;
const REFUSAL_WINDOW_MS = 10_000;

/**
 * `control-refused` events, rate-limited: a flood of refused connections must
 * not flood the application's logs. In each 10 s window the first 10 refusals
 * are reported one by one; the others are counted, and one more event at the
 * end of the window names the last refused peer and how many were not reported.
 */
class RefusalReports {
  readonly #handler: ControlHandler;
  #windowStart = -Infinity;
  #reported = 0;
  #unreported = 0;
  #last: { peer: PeerCredentials; reason: string } | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(handler: ControlHandler) {
    this.#handler = handler;
  }

  report(peer: PeerCredentials, reason: string): void {
    const now = performance.now();
    if (now - this.#windowStart >= REFUSAL_WINDOW_MS && this.#timer === undefined) {
      this.#windowStart = now;
      this.#reported = 0;
    }
    if (this.#reported < REFUSALS_REPORTED) {
      this.#reported++;
      return this.#handler.refused(peer, reason);
    }
    this.#unreported++;
    this.#last = { peer, reason };
    if (this.#timer === undefined) {
      this.#timer = setTimeout(() => this.flush(), Math.max(0, this.#windowStart + REFUSAL_WINDOW_MS - now));
      this.#timer.unref();
    }
  }

  /** Report what was counted but not reported (at the end of the window, or when the socket stops serving). */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    const last = this.#last;
    const count = this.#unreported;
    this.#last = undefined;
    this.#unreported = 0;
    if (!last) return;
    // The summary opens the next window, as its first report.
    this.#windowStart = performance.now();
    this.#reported = 1;
    this.#handler.refused(last.peer, `${last.reason}; ${count} more refused connection(s) in the last ${REFUSAL_WINDOW_MS / 1000} s were not reported one by one`);
  }
}
