/**
 * Signals that request an upgrade, a stop or a partial stop. Control sockets
 * ({ socket: path }) are the other kind of trigger (control-socket.ts).
 */
import { constants } from 'node:os';
import type { EveryTrigger, RssTrigger } from './timers.ts';

export type TriggerAction = 'upgrade' | 'stop' | 'partial-stop';

/** A trigger: a signal name, or a control socket (see ControlSocketTrigger). */
export type Trigger = NodeJS.Signals | ControlSocketTrigger | RssTrigger | EveryTrigger;

/** A control socket that takes this trigger's command (its settings shared by every list naming it). */
export interface ControlSocketTrigger {
  /** A filesystem path (made absolute), or an abstract name starting with '\0'. */
  socket: string;
  /** File mode of the socket. Default 0o600. */
  mode?: number;
  /**
   * Group owning the socket file (name or gid), e.g. for mode 0o660. Default:
   * this process's. It only lets the group's members connect: who may then use
   * the socket is allowUids and allowGids.
   */
  group?: string | number;
  /** Peers allowed besides root and this process's own uid (SO_PEERCRED). Default []. */
  allowUids?: number[];
  /**
   * Peers whose gid is one of these are allowed too. The gid checked is the one
   * SO_PEERCRED reports: the effective gid the client connected with (for a user,
   * the primary group, or the group of `sg group -c ...`), never its
   * supplementary groups. Default [].
   */
  allowGids?: number[];
}

/**
 * Signals that cannot be triggers: SIGKILL and SIGSTOP cannot be caught; the
 * kernel raises SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP and SIGSYS for a fault
 * in the thread that caused it, where a JavaScript handler cannot run (Node
 * would loop on the faulting instruction or crash); SIGABRT is how a process
 * aborts; V8's CPU profiler runs on SIGPROF.
 */
const NOT_TRIGGERS = new Set(['SIGKILL', 'SIGSTOP', 'SIGSEGV', 'SIGBUS', 'SIGFPE', 'SIGILL', 'SIGTRAP', 'SIGSYS', 'SIGABRT', 'SIGIOT', 'SIGPROF']);

export function isCatchableSignal(name: unknown): name is NodeJS.Signals {
  return typeof name === 'string' && Object.hasOwn(constants.signals, name) && !NOT_TRIGGERS.has(name);
}

/**
 * Install one handler per signal; returns a function that removes the handlers
 * of the given actions. Node's signal handles never keep the event loop alive,
 * so handlers stay installed for the life of the process: a late trigger is
 * answered (refused) instead of taking the signal's default action, which would
 * kill the application's clean-up after its drain.
 */
export function installSignals(
  actions: Map<NodeJS.Signals, TriggerAction>,
  fire: (action: TriggerAction, signal: NodeJS.Signals) => void,
): (which: readonly TriggerAction[]) => void {
  const handlers = new Map<NodeJS.Signals, { action: TriggerAction; handler: () => void }>();
  for (const [signal, action] of actions) {
    const handler = () => fire(action, signal);
    handlers.set(signal, { action, handler });
    process.on(signal, handler);
  }
  return (which) => {
    for (const [signal, { action, handler }] of handlers) {
      if (!which.includes(action)) continue;
      process.off(signal, handler);
      handlers.delete(signal);
    }
  };
}
