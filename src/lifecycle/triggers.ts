/**
 * What the triggers ask of the lifecycle: a signal (upgrade, stop, and what a
 * repeated stop signal means to a generation already exiting), and the
 * control sockets' commands and status.
 */
import type { ControlHandler } from '../triggers/control-socket.ts';
import type { TriggerAction } from '../triggers/signals.ts';
import { debug, type Generation } from './core.ts';
import { forceDrain, goAway } from './drain.ts';
import { shutdown } from './exit.ts';
import { rollback } from './rollback.ts';
import { upgrade } from './upgrade.ts';

export function onSignal(g: Generation, action: TriggerAction, signal: NodeJS.Signals): void {
  debug('%s received: %s', signal, action);
  if (action === 'upgrade') {
    upgrade(g, signal).catch(() => {
      // Reported through events() ('refused' or 'child-failed'); a signal has nobody to reject to.
    });
    return;
  }
  const phase = g.phase;
  if (g.rules.stop !== 'exiting' || !('exit' in phase)) return shutdown(g, { mode: action, reason: signal });
  // Already exiting: the stop signal that began it (or, after an upgrade or
  // the primary's order, the first one) only says the service is going away;
  // the next one ends the drain now and steps aside, so that one more gets
  // the default action.
  const { exit } = phase;
  exit.stopSignals++;
  if (exit.stopSignals >= exit.signalsToForce) {
    forceDrain(g, phase);
    g.removeSignals(['stop', 'partial-stop']);
  } else {
    goAway(g, phase);
  }
}

/** What the control sockets ask of this generation. */
export function controlHandler(g: Generation): ControlHandler {
  return {
    generation: g.generation,
    upgrade: (reason, answer, env) => upgrade(g, reason, answer, env),
    rollback: (answer) => rollback(g, answer),
    stop: (mode, reason) => shutdown(g, { mode, reason }),
    refused: (peer, reason) => g.emit({ type: 'control-refused', uid: peer.uid, peerPid: peer.pid, reason }),
    status: () => {
      const phase = g.phase;
      const link = g.link;
      return {
        pid: process.pid,
        generation: g.generation,
        state: phase.state,
        parentAlive: g.parentAlive,
        // A drained parent that still runs is lingering: the application keeps it alive.
        parent: link && g.parentAlive ? { pid: link.hello.parentPid, state: link.drained ? 'drained' : 'draining' } : null,
        upgrade: phase.state === 'upgrading' ? { childPid: phase.child?.pid ?? null } : null,
        listeners: g.listeners.describe().filter((l) => g.applicationListeners().some((a) => a.key === l.key)),
        metrics: { ...g.metrics.snapshot(), generation: g.generation, serving: g.rules.serving },
        // Local mode: upgrades are refused here (they need Linux and the addon).
        ...(g.local ? { local: true } : {}),
        ...(g.role === 'primary' ? { role: 'primary', workers: (g.group?.describe() ?? []).map((w) => ({ ...w, generation: g.generation })) } : {}),
      };
    },
  };
}
