/** From one strategy's raw run to the numbers the report shows. */
import { FAILURE_KINDS, latencySplit, percentileIndex, totalFailures, type FailureKind, type LoadReport, type Sample } from '../../../examples/lib/http-load.ts';
import { latencySummary, spread, type LatencySummary, type Spread } from '../lib/stats.ts';
import type { StrategyRun } from './run.ts';
import { phaseSpreads, type StartPhases } from '../lib/lifecycle-log.ts';

export interface ClientSummary {
  requests: number;
  ok: number;
  failures: Record<FailureKind, number>;
}

export interface UpgradeSummary {
  id: string;
  label: string;
  restarts: number;
  error?: string;
  requests: number;
  completed: number;
  failed: number;
  failures: Record<FailureKind, number>;
  failuresPerRestart: Record<FailureKind, number>;
  keepAlive: ClientSummary;
  fresh: ClientSummary;
  /** Failures of requests that overlapped no restart window (expected: 0). */
  failuresOutsideWindows: number;
  /** Successful requests only. */
  latencyInside: LatencySummary;
  latencyOutside: LatencySummary;
  /** Trigger to the (last) replacement process serving, ms. */
  toServing: Spread;
  /** Trigger to the (last) previous process exited, ms. */
  toOldGone: Spread;
  /** Trigger to the (last) previous process done serving (its drain over; else its exit), ms: the window's end. */
  toOldDone?: Spread;
  /** Distinct processes that answered (x-generation header = pid). */
  servingProcesses: number;
  /** CPU time each new process used from its start to serving, ms (apps that report it). */
  startCpuMs?: Spread;
  /** Where each new process's start went, ms, over the restarts (apps that report it). */
  startPhases?: Record<keyof StartPhases, Spread>;
  /** The first failures, as the load generator described them. */
  firstErrors: string[];
  /**
   * p99 inside and outside the windows with every failed request counted as
   * slower than every answered one (latencyInside and latencyOutside are of
   * answered requests only, where a strategy that fails its slowest requests
   * looks faster): Infinity when 1% or more of them failed.
   */
  p99CountingFailures?: { inside: number; outside: number };
}

/** The 99th percentile of the answered latencies (sorted) and `failed` requests ranked after all of them. */
export function p99CountingFailures(answeredSorted: number[], failed: number): number {
  const n = answeredSorted.length + failed;
  if (n === 0) return NaN;
  const index = percentileIndex(n, 99);
  return index < answeredSorted.length ? answeredSorted[index]! : Infinity;
}

/**
 * The old process writes its exit record just before it dies; the kernel then
 * closes its sockets, and on a loaded 2-core machine the dying process may wait
 * for a CPU meanwhile. Failures that this causes start a few ms after the record.
 */
export const WINDOW_TAIL_MS = 50;

/**
 * The restart windows: from each trigger to the later of "new serving" and "old
 * done serving" (its exit, or the end of an ecdysis generation's drain: it then
 * waits out its probation serving nothing), plus WINDOW_TAIL_MS.
 */
export function restartWindows(run: StrategyRun): [number, number][] {
  return run.handovers.map((h) => [h.triggeredAt, Math.max(h.servingAt, h.oldDoneAt ?? h.oldGoneAt) + WINDOW_TAIL_MS]);
}

export function allSamples(run: StrategyRun): Sample[] {
  return run.load ? [...run.load.keepAlive.samples, ...run.load.fresh.samples] : [];
}

export function summariseUpgrades(run: StrategyRun): UpgradeSummary {
  const restarts = run.handovers.length;
  const reports = run.load ? [run.load.keepAlive, run.load.fresh] : [];
  const failures = sumFailures(reports);
  const windows = restartWindows(run);
  const samples = allSamples(run);
  const { inside, outside, failedInside, failedOutside } = latencySplit(samples, windows);
  return {
    id: run.id,
    label: run.label,
    restarts,
    ...(run.error ? { error: run.error } : {}),
    requests: reports.reduce((n, r) => n + r.requests, 0),
    completed: reports.reduce((n, r) => n + r.ok, 0),
    failed: totalFailures({ failures }),
    failures,
    failuresPerRestart: Object.fromEntries(FAILURE_KINDS.map((k) => [k, restarts ? failures[k] / restarts : 0])) as Record<FailureKind, number>,
    keepAlive: clientSummary(run.load?.keepAlive),
    fresh: clientSummary(run.load?.fresh),
    failuresOutsideWindows: failedOutside,
    latencyInside: latencySummary(inside),
    latencyOutside: latencySummary(outside),
    toServing: spread(run.handovers.map((h) => h.servingAt - h.triggeredAt)),
    toOldGone: spread(run.handovers.map((h) => h.oldGoneAt - h.triggeredAt)),
    toOldDone: spread(run.handovers.map((h) => (h.oldDoneAt ?? h.oldGoneAt) - h.triggeredAt)),
    servingProcesses: new Set(reports.flatMap((r) => r.generations)).size,
    ...phaseSpreads(run.handovers.flatMap((h) => (h.phases ? [h.phases] : []))),
    ...(run.handovers.some((h) => h.startCpuMs !== undefined) ? { startCpuMs: spread(run.handovers.flatMap((h) => (h.startCpuMs === undefined ? [] : [h.startCpuMs]))) } : {}),
    firstErrors: reports.flatMap((r) => r.errors.slice(0, 5)),
    p99CountingFailures: { inside: p99CountingFailures(inside, failedInside), outside: p99CountingFailures(outside, failedOutside) },
  };
}

function sumFailures(reports: LoadReport[]): Record<FailureKind, number> {
  const sum = Object.fromEntries(FAILURE_KINDS.map((k) => [k, 0])) as Record<FailureKind, number>;
  for (const report of reports) for (const kind of FAILURE_KINDS) sum[kind] += report.failures[kind];
  return sum;
}

function clientSummary(report: LoadReport | undefined): ClientSummary {
  return { requests: report?.requests ?? 0, ok: report?.ok ?? 0, failures: sumFailures(report ? [report] : []) };
}
