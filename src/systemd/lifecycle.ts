/**
 * What systemd hears of the lifecycle, called by the state machine after each
 * transition. It works with the default NotifyAccess=main on systemd 252: every
 * message comes from the process that is main at that moment, and the hand-over
 * (MAINPID=) is sent by the old generation while it is still main.
 */
import type { Registry } from '../generation/registry.ts';
import { storedName } from './activation.ts';
import { monotonicUsec, type ServiceManager } from './notify.ts';

/** Added to a timeout systemd must wait through, for the work around it. */
const EXTEND_MARGIN_MS = 5_000;

export class SystemdLifecycle {
  readonly #manager: ServiceManager;
  readonly #watchdogUsec: number | undefined;
  readonly #fdStore: boolean;
  readonly #stored = new Set<string>();

  constructor(manager: ServiceManager, watchdogUsec: number | undefined, fdStore: boolean) {
    this.#manager = manager;
    this.#watchdogUsec = watchdogUsec;
    this.#fdStore = fdStore;
  }

  /** This generation serves, as the main process (first start, commit read, or carrying on alone). */
  ready(generation: number, registry: Registry): void {
    this.#manager.notify({ READY: 1, STATUS: `serving: generation ${generation}, pid ${process.pid}` });
    if (this.#watchdogUsec) this.#manager.startWatchdog(this.#watchdogUsec);
    if (this.#fdStore) this.#storeSockets(registry);
  }

  /** An upgrade began: systemd waits for READY=1 (the start timeout, extended to ours). */
  upgrading(generation: number, upgradeTimeoutMs: number): void {
    this.#manager.notify({
      RELOADING: 1,
      MONOTONIC_USEC: monotonicUsec().toString(),
      STATUS: `upgrading: starting generation ${generation + 1}`,
      EXTEND_TIMEOUT_USEC: (upgradeTimeoutMs + EXTEND_MARGIN_MS) * 1000,
    });
  }

  /** The commit: this (still main) process hands the main pid to its successor. */
  committed(generation: number, childPid: number): void {
    this.#manager.stopWatchdog();
    this.#manager.notify({ MAINPID: childPid, READY: 1, STATUS: `serving: generation ${generation + 1}, pid ${childPid}` });
  }

  /** Operator rollback: this (still main) process hands the main pid back to its parent, which serves again. */
  rolledBack(generation: number, parentPid: number): void {
    this.#manager.stopWatchdog();
    this.#manager.notify({ MAINPID: parentPid, READY: 1, STATUS: `serving: generation ${generation - 1}, pid ${parentPid}, rolled back from generation ${generation}` });
  }

  /** RELOADING=1 must be followed by READY=1 whatever happened. */
  upgradeFailed(generation: number, code: string): void {
    this.#manager.notify({ READY: 1, STATUS: `serving: generation ${generation}, pid ${process.pid}; the last upgrade failed: ${code}` });
  }

  /** The successor died: this process is main again (accepted where NotifyAccess lets it speak). */
  tookBack(generation: number, registry: Registry): void {
    this.#manager.notify({ MAINPID: process.pid, READY: 1, STATUS: `serving: generation ${generation}, pid ${process.pid}, taken back after the successor died` });
    if (this.#watchdogUsec) this.#manager.startWatchdog(this.#watchdogUsec);
    if (this.#fdStore) this.#storeSockets(registry);
  }

  stopping(): void {
    this.#manager.notify({ STOPPING: 1, STATUS: 'stopping' });
  }

  /** A stop's lame-duck delay: stopping already, serving on for `delayMs` (systemd's stop timeout must not cut it). */
  lameDuck(delayMs: number): void {
    this.#manager.notify({ STOPPING: 1, STATUS: `stopping in ${Math.ceil(delayMs / 1000)} s (not ready; serving meanwhile)`, EXTEND_TIMEOUT_USEC: (delayMs + EXTEND_MARGIN_MS) * 1000 });
  }

  /** A stop drains for up to `timeoutMs`: systemd's stop timeout must not cut it short. */
  draining(timeoutMs: number): void {
    this.#manager.notify({ EXTEND_TIMEOUT_USEC: (timeoutMs + EXTEND_MARGIN_MS) * 1000, STATUS: `draining (at most ${Math.ceil(timeoutMs / 1000)} s)` });
  }

  /** The generation is done. */
  done(): void {
    this.#manager.stopWatchdog();
  }

  /**
   * The fd store keeps the listening sockets open in systemd across a crash or
   * a restart of the service; the next start gets them back by name. systemd
   * ignores a socket it already holds, so storing again is harmless. A socket
   * its socket unit passed is held by systemd already: not stored.
   */
  #storeSockets(registry: Registry): void {
    for (const entry of registry.entries) {
      if (entry.activated) continue;
      const name = storedName(entry.key);
      if (!name || this.#stored.has(name)) continue;
      if (this.#manager.notify({ FDSTORE: 1, FDNAME: name }, [entry.fd])) this.#stored.add(name);
    }
  }
}
