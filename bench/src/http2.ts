/**
 * Upgrade under load, HTTP/2: the naive restart of an h2c service that sends
 * GOAWAY to its sessions on SIGTERM, against the same service behind ecdysis
 * (listener.serve()), under examples/lib's Http2Load in a process of its own:
 * sessions of concurrent streams, every fifth a slow one, no retry (except the
 * one resend RFC 9113 allows of a stream refused unprocessed, counted apart).
 */
import { startLoadProcess } from '../../examples/lib/load-runner.ts';
import { FAILURE_KINDS, totalFailures, type FailureKind } from '../../examples/lib/http-load.ts';
import type { Http2LoadReport } from '../../examples/lib/http2-load.ts';
import { APPS } from './apps.ts';
import { spread, type Spread } from './lib/stats.ts';
import { runStrategy, type RunningLoad, type UpgradeRunOptions } from './upgrade/run.ts';
import { ecdysisStrategy } from './upgrade/strategies/ecdysis.ts';
import { naiveStrategy } from './upgrade/strategies/naive.ts';

export interface Http2Options {
  restarts: number;
  warmupMs: number;
  settleMs: number;
  sessions: number;
  streamsPerSession: number;
  /** The slow stream (every fifth), ms. */
  slowMs: number;
  streamTimeoutMs: number;
  handoverTimeoutMs: number;
  tmpDir: string;
}

export interface Http2StrategySummary {
  id: string;
  label: string;
  restarts: number;
  error?: string;
  streams: number;
  completed: number;
  failed: number;
  failures: Record<FailureKind, number>;
  /** Streams refused unprocessed (REFUSED_STREAM before any response) and sent once more. */
  resentUnprocessed: number;
  toServing: Spread;
  toOldGone: Spread;
  firstErrors: string[];
}

export interface Http2Result {
  options: Omit<Http2Options, 'tmpDir'>;
  strategies: Http2StrategySummary[];
}

export const HTTP2_STRATEGIES = [
  naiveStrategy(APPS.plainHttp2, 'naive-http2', 'naive restart (GOAWAY to every session, exit, start)'),
  ecdysisStrategy(APPS.ecdysisHttp2, 'ecdysis-http2', 'ecdysis (SIGHUP, listener.serve())'),
];

export async function measureHttp2(options: Http2Options, progress: (message: string) => void): Promise<Http2Result> {
  const { tmpDir, ...shown } = options;
  const runOptions: UpgradeRunOptions = {
    restarts: options.restarts,
    warmupMs: options.warmupMs,
    settleMs: options.settleMs,
    keepAliveClients: 0,
    freshClients: 0,
    requestTimeoutMs: options.streamTimeoutMs,
    handoverTimeoutMs: options.handoverTimeoutMs,
    tmpDir,
  };
  const startLoad = (port: number, boundMs: number) =>
    startLoadProcess({
      protocol: 'http2',
      port,
      sessions: options.sessions,
      streamsPerSession: options.streamsPerSession,
      slowPath: `/slow?ms=${options.slowMs}`,
      timeoutMs: options.streamTimeoutMs,
      durationMs: boundMs,
    }) as unknown as RunningLoad<Http2LoadReport>;
  const strategies: Http2StrategySummary[] = [];
  for (const strategy of HTTP2_STRATEGIES) {
    progress(`http2: ${strategy.label}`);
    const run = await runStrategy(strategy, runOptions, startLoad);
    if (run.error) progress(`  ${strategy.id}: ${run.error}`);
    const load = run.load;
    const failures = Object.fromEntries(FAILURE_KINDS.map((k) => [k, load?.failures[k] ?? 0])) as Record<FailureKind, number>;
    strategies.push({
      id: run.id,
      label: run.label,
      restarts: run.handovers.length,
      ...(run.error ? { error: run.error } : {}),
      streams: load?.requests ?? 0,
      completed: load?.ok ?? 0,
      failed: totalFailures({ failures }),
      failures,
      resentUnprocessed: load?.resentUnprocessed ?? 0,
      toServing: spread(run.handovers.map((h) => h.servingAt - h.triggeredAt)),
      toOldGone: spread(run.handovers.map((h) => h.oldGoneAt - h.triggeredAt)),
      firstErrors: load?.errors.slice(0, 5) ?? [],
    });
  }
  return { options: shown, strategies };
}
