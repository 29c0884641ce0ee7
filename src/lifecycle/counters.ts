/**
 * The counters a service keeps across generations: each new generation starts
 * from the counts its parent had when it started it (hello's `metrics`), and
 * adds what the parent's drain reports. Gauges and counting: metrics.ts.
 */
import type { MetricFamily } from '../internal/prometheus.ts';
import type { DrainCounts, MetricsSnapshot } from '../wire/protocol.ts';

export class Metrics {
  readonly #upgrades = new Map<string, number>();
  readonly #drained: DrainCounts = { completed: 0, closedIdle: 0, destroyed: 0 };
  #lastUpgradeMs: number | undefined;

  constructor(from: MetricsSnapshot | undefined) {
    if (!from) return;
    for (const [key, value] of Object.entries(from.upgrades)) this.#upgrades.set(key, value);
    this.addDrain(from.drained);
    this.#lastUpgradeMs = from.lastUpgradeMs;
  }

  count(key: 'ok' | 'taken_back' | 'rolled_back' | `failed:${string}` | `refused:${string}` | `trigger:${string}`): void {
    this.#upgrades.set(key, (this.#upgrades.get(key) ?? 0) + 1);
  }

  upgraded(elapsedMs: number): void {
    this.#lastUpgradeMs = Math.max(0, Math.round(elapsedMs));
  }

  addDrain(counts: DrainCounts): void {
    this.#drained.completed += counts.completed;
    this.#drained.closedIdle += counts.closedIdle;
    this.#drained.destroyed += counts.destroyed;
  }

  /** What the next generation goes on from. */
  snapshot(): MetricsSnapshot {
    return { upgrades: Object.fromEntries(this.#upgrades), drained: { ...this.#drained }, ...(this.#lastUpgradeMs === undefined ? {} : { lastUpgradeMs: this.#lastUpgradeMs }) };
  }

  /** The counters, as families (the gauges are the generation's: see metricFamilies). */
  counterFamilies(): MetricFamily[] {
    const upgrades: MetricFamily['samples'] = [
      { labels: { outcome: 'ok' }, value: this.#upgrades.get('ok') ?? 0 },
      { labels: { outcome: 'taken_back' }, value: this.#upgrades.get('taken_back') ?? 0 },
      { labels: { outcome: 'rolled_back' }, value: this.#upgrades.get('rolled_back') ?? 0 },
    ];
    const triggers: MetricFamily['samples'] = [];
    for (const [key, value] of [...this.#upgrades].sort()) {
      const [outcome, code] = key.split(':');
      if (outcome === 'trigger') triggers.push({ labels: { trigger: code! }, value });
      else if (code) upgrades.push({ labels: { outcome: outcome!, code }, value });
    }
    return [
      {
        name: 'ecdysis_upgrades_total',
        help: 'Upgrades of this service, by outcome (ok, failed, refused, taken_back: the new generation died after it took over, rolled_back: an operator rolled it back) and error code.',
        type: 'counter',
        samples: upgrades,
      },
      { name: 'ecdysis_upgrade_requests_total', help: 'Upgrades asked for, by trigger (signal, control, method, rss, every).', type: 'counter', samples: triggers },
      {
        name: 'ecdysis_drained_connections_total',
        help: "Connections of earlier generations' drains, by how they ended (completed, idle_closed: idle keep-alive connections closed, destroyed: cut at the deadline).",
        type: 'counter',
        samples: [
          { labels: { how: 'completed' }, value: this.#drained.completed },
          { labels: { how: 'idle_closed' }, value: this.#drained.closedIdle },
          { labels: { how: 'destroyed' }, value: this.#drained.destroyed },
        ],
      },
      ...(this.#lastUpgradeMs === undefined
        ? []
        : [{ name: 'ecdysis_last_upgrade_duration_seconds', help: 'From the trigger to the new generation serving, for the last upgrade.', type: 'gauge' as const, samples: [{ labels: {}, value: this.#lastUpgradeMs / 1000 }] }]),
    ];
  }
}
