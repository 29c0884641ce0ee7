/**
 * The soak's plain-text report, and its verdict. Failed requests are put next
 * to what the service was doing when they happened (an upgrade attempt of a
 * given behaviour, a generation's death, the final stop, or nothing at all).
 */
import { FAILURE_KINDS, percentile, totalFailures, type FailureKind, type LoadReport } from '../examples/lib/http-load.ts';
import { describe, isExpected, type Attempt, type Incident, type Restart } from './outcomes.ts';
import type { Behaviour, SoakRecord } from './plan.ts';
import type { Zombie } from './processes.ts';

export interface ReportInput {
  /** One line describing the options, printed first. */
  setup: string[];
  attempts: Attempt[];
  incidents: Incident[];
  restarts: Restart[];
  load: LoadReport | undefined;
  /** When the final SIGTERM was sent, if it was. */
  stopAt: number | undefined;
  /** The serving generation's 'requested' event records, in order. */
  footprints: SoakRecord[];
  /** When generations that were serving crashed (their last record). */
  crashes: number[];
  zombies: Zombie[];
  durationMs: number;
  harnessError: string | undefined;
  stderrTail: string;
}

interface Window {
  label: string;
  start: number;
  end: number;
}

const BETWEEN = 'between upgrades';
const FINAL_STOP = 'final stop (after SIGTERM)';
const IN_FLIGHT_ON_CRASH = 'in flight on a generation when it crashed';
/**
 * A request sent this soon after a crash was written on a connection to the
 * crashing process before the kernel closed it.
 */
const CRASH_SLACK_MS = 50;

type Counts = Record<FailureKind, number>;
const zero = (): Counts => ({ refused: 0, reset: 0, hangup: 0, timeout: 0, status: 0, other: 0 });
const sum = (c: Counts) => FAILURE_KINDS.reduce((n, k) => n + c[k], 0);
const kinds = (c: Counts) => FAILURE_KINDS.filter((k) => c[k] > 0).map((k) => `${k} ${c[k]}`).join(', ');

/**
 * Failures by the window they overlap (the latest one that began before the
 * request ended). A request overlaps when it was in flight at any time within it.
 */
function attribute(load: LoadReport, input: ReportInput): Map<string, Counts> {
  const windows: Window[] = [
    ...input.attempts.map((a) => ({ label: a.behaviour as string, start: a.triggeredAt, end: a.settledAt })),
    ...input.incidents.map((i) => ({ label: 'serving generation died between upgrades', start: i.detectedAt, end: i.settledAt })),
    ...(input.stopAt === undefined ? [] : [{ label: FINAL_STOP, start: input.stopAt, end: Infinity }]),
  ].sort((a, b) => a.start - b.start);
  const byLabel = new Map<string, Counts>();
  for (const [startedAt, latency, failure] of load.samples) {
    if (failure === '') continue;
    const endedAt = startedAt + latency;
    let label = BETWEEN;
    for (const w of windows) {
      if (w.start > endedAt) break;
      if (w.end >= startedAt) label = w.label;
    }
    // A connection to a process that dies dies with it: reset or hung up, never
    // refused (what waits in the accept queue goes to the generation that takes
    // back). No library can answer those requests.
    const onCrash = (failure === 'reset' || failure === 'hangup') && input.crashes.some((at) => startedAt <= at + CRASH_SLACK_MS && endedAt >= at);
    if (onCrash) label = IN_FLIGHT_ON_CRASH;
    const counts = byLabel.get(label) ?? zero();
    counts[failure]++;
    byLabel.set(label, counts);
  }
  return byLabel;
}

const pad = (s: string | number, n: number) => String(s).padEnd(n);
const mb = (kb: number | undefined) => (kb === undefined || !Number.isFinite(kb) ? '-' : `${(kb / 1024).toFixed(1)} MB`);

/** The report's lines, and whether the run failed. */
export function formatReport(input: ReportInput): { lines: string[]; failed: boolean } {
  const lines = ['', ...input.setup, ''];
  const reasons: string[] = [];
  const load = input.load;

  // Requests.
  let failedRequests = 0;
  const byLabel = load ? attribute(load, input) : new Map<string, Counts>();
  if (load) {
    const total = totalFailures(load);
    const stop = byLabel.get(FINAL_STOP) ?? zero();
    // Once the service is stopped, a refused connection is what a client should get.
    const expectedAfterStop = stop.refused;
    const lostInCrashes = sum(byLabel.get(IN_FLIGHT_ON_CRASH) ?? zero());
    failedRequests = total - expectedAfterStop - lostInCrashes;
    const unattributed = total - [...byLabel.values()].reduce((n, c) => n + sum(c), 0);
    lines.push(
      `requests: ${load.requests} sent, ${load.ok} ok, ${failedRequests} failed` +
        (lostInCrashes ? `, ${lostInCrashes} in flight on a generation when it crashed (lost with it, not counted)` : '') +
        (expectedAfterStop ? `, ${expectedAfterStop} refused after the final SIGTERM (expected, not counted)` : ''),
    );
    lines.push(`  by outcome: ok ${load.ok}, ${FAILURE_KINDS.map((k) => `${k} ${load.failures[k]}`).join(', ')}`);
    lines.push(`  connections opened by clients: ${load.connectionsOpened}; generations that answered: ${load.generations.length}`);
    if (total > 0) {
      lines.push('  failed requests by what the service was doing:');
      for (const [label, counts] of byLabel) lines.push(`    ${pad(label, 42)}${pad(sum(counts), 8)}${kinds(counts)}`);
      if (unattributed > 0) lines.push(`    ${pad('not sampled (sample bound reached)', 42)}${unattributed}`);
    }
    if (failedRequests > 0) reasons.push(`${failedRequests} requests failed`);
  } else {
    reasons.push('no load report');
  }
  lines.push('');

  // Upgrades, by outcome and by behaviour.
  const attempts = input.attempts;
  const outcomeCounts = new Map<string, number>();
  for (const a of attempts) outcomeCounts.set(describe(a.outcome), (outcomeCounts.get(describe(a.outcome)) ?? 0) + 1);
  const succeeded = attempts.filter((a) => a.outcome.kind === 'succeeded').length;
  const failed = attempts.filter((a) => a.outcome.kind === 'failed').length;
  const died = attempts.filter((a) => a.outcome.kind === 'died-after-ready');
  const takenBack = died.filter((a) => a.outcome.kind === 'died-after-ready' && a.outcome.then === 'taken-back').length;
  lines.push(`upgrades: ${attempts.length} attempted, ${succeeded} succeeded, ${failed} failed before ready, ${died.length} successor died after ready (${takenBack} taken back, ${died.length - takenBack} service lost)`);
  for (const [label, n] of [...outcomeCounts].sort((a, b) => b[1] - a[1])) lines.push(`  ${pad(n, 6)}${label}`);
  lines.push('');
  lines.push(`  ${pad('behaviour', 26)}${pad('attempts', 10)}${pad('as expected', 13)}failed requests during them`);
  const behaviours = [...new Set(attempts.map((a) => a.behaviour))] as Behaviour[];
  for (const behaviour of behaviours) {
    const of = attempts.filter((a) => a.behaviour === behaviour);
    const expected = of.filter((a) => isExpected(a.behaviour, a.outcome)).length;
    const counts = byLabel.get(behaviour);
    lines.push(`  ${pad(behaviour, 26)}${pad(of.length, 10)}${pad(expected, 13)}${counts ? `${sum(counts)} (${kinds(counts)})` : 0}`);
  }
  const times = (b: Behaviour) =>
    attempts
      .filter((a) => a.behaviour === b && a.outcome.kind === 'succeeded' && a.answerMs !== undefined)
      .map((a) => a.answerMs!)
      .sort((x, y) => x - y);
  for (const b of ['ok', 'slow-start'] as const) {
    const t = times(b);
    if (t.length > 0) lines.push(`  ${b}: SIGHUP to child-ready p50 ${Math.round(percentile(t, 50))} ms, max ${Math.round(t[t.length - 1]!)} ms`);
  }
  const unexpected = attempts.filter((a) => !isExpected(a.behaviour, a.outcome));
  const missed = attempts.filter((a) => a.killMissed).length;
  if (missed > 0) lines.push(`  sigkill-during-handover: ${missed} kills came too late (the new generation was already ready)`);
  for (const a of unexpected.slice(0, 10)) {
    lines.push(`  unexpected: attempt ${a.n} (${a.behaviour}, from generation ${a.from.gen} pid ${a.from.pid}): ${describe(a.outcome)}`);
  }
  if (unexpected.length > 0) reasons.push(`${unexpected.length} upgrades ended other than their behaviour asks`);
  for (const i of input.incidents) {
    lines.push(`  serving generation ${i.generation.gen} (pid ${i.generation.pid}) died between upgrades: ${i.then === 'taken-back' ? 'old generation took back' : 'service lost'}`);
  }
  if (input.restarts.length > 0) {
    const down = input.restarts.map((r) => r.downMs);
    lines.push(
      `  service lost ${down.length} times (no generation left to serve); the driver started a new generation 0 each time, ` +
        `${Math.round(Math.min(...down))}-${Math.round(Math.max(...down))} ms after the death`,
    );
  }
  if (input.incidents.length > 0) reasons.push(`${input.incidents.length} serving generations died between upgrades`);
  lines.push('');

  // Footprint of the serving generation when asked to upgrade.
  const first = input.footprints[0];
  const last = input.footprints[input.footprints.length - 1];
  const footprint = (r: SoakRecord | undefined) => (r ? `generation ${r.gen} pid ${r.pid}: ${r.fds} fds, RSS ${mb(r.rssKb)}` : '-');
  lines.push(`serving generation at the first upgrade: ${footprint(first)}`);
  lines.push(`serving generation at the last upgrade:  ${footprint(last)}`);
  if (input.footprints.length > 0) {
    const fds = input.footprints.map((r) => r.fds ?? 0);
    const rss = input.footprints.map((r) => r.rssKb ?? 0);
    lines.push(`  over all ${input.footprints.length} upgrades: fds ${Math.min(...fds)}-${Math.max(...fds)}, RSS ${mb(Math.min(...rss))}-${mb(Math.max(...rss))}`);
  }
  lines.push(`zombies seen: ${input.zombies.length}${input.zombies.length ? ` (${input.zombies.slice(0, 10).map((z) => `pid ${z.pid} of ${z.parent}`).join(', ')})` : ''}`);
  if (input.zombies.length > 0) reasons.push(`${input.zombies.length} zombies`);
  lines.push(`duration: ${(input.durationMs / 1000).toFixed(1)} s`);

  if (input.harnessError) {
    reasons.unshift(`harness error: ${input.harnessError}`);
    if (input.stderrTail) lines.push('', 'stderr of the service (tail):', input.stderrTail.trimEnd());
  }
  lines.push('');
  if (reasons.length === 0) lines.push('PASS');
  else {
    lines.push(`FAIL: ${reasons.join('; ')}`);
    if (load && failedRequests > 0) lines.push(...load.errors.slice(0, 5).map((e) => `  ${e}`));
  }
  return { lines, failed: reasons.length > 0 };
}
