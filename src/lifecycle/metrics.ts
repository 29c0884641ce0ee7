/**
 * The service's metrics: the counters (counters.ts) counted from the
 * lifecycle's own events, and the gauges of this generation.
 */
import type { MetricFamily } from '../internal/prometheus.ts';
import type { Generation } from './core.ts';

/** Count the lifecycle's outcomes as they happen. */
export function installMetrics(g: Generation): void {
  const { metrics, link } = g;
  g.events.tap((event) => {
    switch (event.type) {
      case 'ready':
        // A new generation counts its own upgrade: its parent's counts came before it.
        if (link) {
          metrics.count('ok');
          if (link.hello.requestedAt !== undefined) metrics.upgraded(Date.now() - link.hello.requestedAt);
        }
        break;
      case 'child-ready':
        metrics.upgraded(event.elapsedMs);
        break;
      case 'child-failed':
        metrics.count(`failed:${event.error.code}`);
        break;
      case 'refused':
        metrics.count(`refused:${event.error.code}`);
        break;
      case 'successor-failed':
        metrics.count('taken_back');
        break;
      case 'successor-rolled-back':
        metrics.count('rolled_back');
        break;
      case 'requested':
        metrics.count(`trigger:${triggerOf(event.reason)}`);
        break;
    }
  });
  void link?.parentDrained.then((drain) => drain && metrics.addDrain(drain));
}

/** Every metric of this generation, counters and gauges. */
export function metricFamilies(g: Generation): MetricFamily[] {
  const draining = new Set<number>();
  if (g.link && g.parentAlive && !g.link.drained) draining.add(g.link.hello.parentPid);
  for (const ancestor of g.ancestors.known) {
    // A parent that said it is drained may live on (lingering), draining nothing.
    if (g.link?.drained && ancestor.pid === g.link.hello.parentPid) continue;
    if (isRunning(ancestor.pid)) draining.add(ancestor.pid);
  }
  const connections = g.applicationListeners().reduce((n, l) => n + l.connectionCount, 0);
  return [
    { name: 'ecdysis_generation', help: 'The generation answering (0 on the first start, one more at each upgrade).', type: 'gauge', samples: [{ labels: {}, value: g.generation }] },
    { name: 'ecdysis_ready', help: '1 while this generation serves and is not stopping (what /readyz answers, checks aside).', type: 'gauge', samples: [{ labels: {}, value: g.rules.serving ? 1 : 0 }] },
    ...g.metrics.counterFamilies(),
    { name: 'ecdysis_draining_generations', help: 'Older generations of this service still draining.', type: 'gauge', samples: [{ labels: {}, value: draining.size }] },
    { name: 'ecdysis_connections', help: "Open connections of this generation's listeners.", type: 'gauge', samples: [{ labels: { generation: String(g.generation) }, value: connections }] },
  ];
}

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The kind of trigger an upgrade's reason names (a signal, a control socket, the method, a timer). */
function triggerOf(reason: string): string {
  if (reason.startsWith('SIG')) return 'signal';
  if (reason === 'control socket') return 'control';
  if (reason === 'upgrade()') return 'method';
  return /^[a-z_]{1,32}$/.test(reason) ? reason : 'other';
}
