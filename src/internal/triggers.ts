/**
 * Signals that request an upgrade, a stop or a partial stop. Control sockets
 * ({ socket: path }) are the other kind of trigger; they are validated here too.
 */
import { constants } from 'node:os';

export type TriggerAction = 'upgrade' | 'stop' | 'partial-stop';

/** A trigger: a signal name, or a control socket. */
export type Trigger = NodeJS.Signals | { socket: string };

const UNCATCHABLE = new Set(['SIGKILL', 'SIGSTOP']);

export function isCatchableSignal(name: unknown): name is NodeJS.Signals {
  return typeof name === 'string' && name in constants.signals && !UNCATCHABLE.has(name);
}

/**
 * Install one handler per signal; returns a function that removes them. Node's
 * signal handles never keep the event loop alive, so an installed handler does
 * not stop a drained process from exiting.
 */
export function installSignals(actions: Map<NodeJS.Signals, TriggerAction>, fire: (action: TriggerAction, signal: NodeJS.Signals) => void): () => void {
  const handlers = new Map<NodeJS.Signals, () => void>();
  for (const [signal, action] of actions) {
    const handler = () => fire(action, signal);
    handlers.set(signal, handler);
    process.on(signal, handler);
  }
  return () => {
    for (const [signal, handler] of handlers) process.off(signal, handler);
  };
}
