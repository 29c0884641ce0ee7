/**
 * The latency chart: one panel per strategy, latency of successful requests
 * by the time they were sent (per 100 ms bucket: median and max, log scale),
 * restart windows shaded with the trigger as a dashed line, failed requests as
 * red ticks at the time they were sent, taller for more. Hand-written SVG,
 * downsampled to stay small.
 */
import { allSamples, restartWindows } from '../upgrade/analyse.ts';
import type { StrategyRun } from '../upgrade/run.ts';
import { median } from '../lib/stats.ts';

const WIDTH = 960;
const PANEL_HEIGHT = 170;
const MARGIN = { left: 64, right: 16, top: 26, bottom: 26 };
const HEADER = 56;
const BUCKET_MS = 100;
const Y_MIN_MS = 0.1;
const Y_MAX_MS = 10_000;

interface Bucket {
  p50: number;
  max: number;
  failures: number;
}

export function latencySvg(runs: StrategyRun[]): string {
  const origins = runs.map(loadStart);
  const spanMs = Math.max(...runs.map((run, i) => loadEnd(run) - origins[i]!), 1_000);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const x = (ms: number) => MARGIN.left + (ms / spanMs) * plotWidth;
  const height = HEADER + runs.length * PANEL_HEIGHT;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="${MARGIN.left}" y="20" font-size="14" font-weight="bold">Latency during restarts under load (same app, same load, one panel per strategy)</text>`,
    legend(MARGIN.left, 40),
  ];
  runs.forEach((run, i) => parts.push(panel(run, origins[i]!, HEADER + i * PANEL_HEIGHT, x, spanMs)));
  parts.push('</svg>');
  return parts.join('\n');
}

function panel(run: StrategyRun, origin: number, top: number, x: (ms: number) => number, spanMs: number): string {
  const plotTop = top + MARGIN.top;
  const plotBottom = top + PANEL_HEIGHT - MARGIN.bottom;
  const y = (ms: number) => {
    const clamped = Math.min(Y_MAX_MS, Math.max(Y_MIN_MS, ms));
    const f = (Math.log10(clamped) - Math.log10(Y_MIN_MS)) / (Math.log10(Y_MAX_MS) - Math.log10(Y_MIN_MS));
    return plotBottom - f * (plotBottom - plotTop);
  };
  const buckets = bucketise(run, origin);
  const failures = [...buckets.values()].reduce((n, b) => n + b.failures, 0);
  const out: string[] = [];
  const title = `${escape(run.label)}: ${failures} failed request${failures === 1 ? '' : 's'} in ${run.handovers.length} restarts${run.error ? ` (run error: ${escape(run.error)})` : ''}`;
  out.push(`<text x="${MARGIN.left}" y="${top + 16}" font-size="12" font-weight="bold">${title}</text>`);
  out.push(`<rect x="${x(0)}" y="${plotTop}" width="${x(spanMs) - x(0)}" height="${plotBottom - plotTop}" fill="none" stroke="#bbb"/>`);
  for (const ms of [1, 10, 100, 1000]) {
    out.push(`<line x1="${x(0)}" x2="${x(spanMs)}" y1="${f1(y(ms))}" y2="${f1(y(ms))}" stroke="#eee"/>`);
    out.push(`<text x="${MARGIN.left - 6}" y="${f1(y(ms) + 4)}" text-anchor="end" fill="#666">${ms >= 1000 ? `${ms / 1000} s` : `${ms} ms`}</text>`);
  }
  for (let s = 0; s * 1000 <= spanMs; s += spanMs > 20_000 ? 5 : 2) {
    out.push(`<text x="${f1(x(s * 1000))}" y="${plotBottom + 14}" text-anchor="middle" fill="#666">${s} s</text>`);
  }
  for (const [start, end] of restartWindows(run)) {
    const [a, b] = [x(start - origin), x(end - origin)];
    out.push(`<rect x="${f1(a)}" y="${plotTop}" width="${f1(Math.max(1, b - a))}" height="${plotBottom - plotTop}" fill="#f2e6a0" opacity="0.6"/>`);
    out.push(`<line x1="${f1(a)}" x2="${f1(a)}" y1="${plotTop}" y2="${plotBottom}" stroke="#555" stroke-dasharray="3,2"/>`);
  }
  const sortedKeys = [...buckets.keys()].sort((p, q) => p - q);
  const line = (pick: (b: Bucket) => number) =>
    sortedKeys
      .filter((k) => Number.isFinite(pick(buckets.get(k)!)))
      .map((k) => `${f1(x(k * BUCKET_MS + BUCKET_MS / 2))},${f1(y(pick(buckets.get(k)!)))}`)
      .join(' ');
  out.push(`<polyline fill="none" stroke="#e8912d" stroke-width="1" points="${line((b) => b.max)}"/>`);
  out.push(`<polyline fill="none" stroke="#2f6db5" stroke-width="1.5" points="${line((b) => b.p50)}"/>`);
  for (const k of sortedKeys) {
    const n = buckets.get(k)!.failures;
    if (n === 0) continue;
    const h = 6 + 8 * Math.log10(n);
    const cx = f1(x(k * BUCKET_MS + BUCKET_MS / 2));
    out.push(`<line x1="${cx}" x2="${cx}" y1="${plotTop}" y2="${f1(plotTop + h)}" stroke="#d62728" stroke-width="2"><title>${n} failed</title></line>`);
  }
  return out.join('\n');
}

function bucketise(run: StrategyRun, origin: number): Map<number, Bucket> {
  const latencies = new Map<number, number[]>();
  const failures = new Map<number, number>();
  for (const [at, latency, failure] of allSamples(run)) {
    const key = Math.floor((at - origin) / BUCKET_MS);
    if (failure !== '') failures.set(key, (failures.get(key) ?? 0) + 1);
    else {
      const values = latencies.get(key);
      if (values) values.push(latency);
      else latencies.set(key, [latency]);
    }
  }
  const buckets = new Map<number, Bucket>();
  for (const key of new Set([...latencies.keys(), ...failures.keys()])) {
    const values = latencies.get(key) ?? [];
    buckets.set(key, {
      p50: values.length ? median(values) : NaN,
      max: values.length ? values.reduce((m, v) => Math.max(m, v), 0) : NaN,
      failures: failures.get(key) ?? 0,
    });
  }
  return buckets;
}

function legend(left: number, y: number): string {
  return [
    `<line x1="${left}" x2="${left + 24}" y1="${y - 4}" y2="${y - 4}" stroke="#2f6db5" stroke-width="1.5"/><text x="${left + 30}" y="${y}">median latency per 100 ms</text>`,
    `<line x1="${left + 190}" x2="${left + 214}" y1="${y - 4}" y2="${y - 4}" stroke="#e8912d"/><text x="${left + 220}" y="${y}">max latency per 100 ms</text>`,
    `<rect x="${left + 370}" y="${y - 10}" width="24" height="10" fill="#f2e6a0"/><line x1="${left + 370}" x2="${left + 370}" y1="${y - 10}" y2="${y}" stroke="#555" stroke-dasharray="3,2"/><text x="${left + 400}" y="${y}">restart: trigger to new serving and old gone</text>`,
    `<line x1="${left + 650}" x2="${left + 650}" y1="${y - 10}" y2="${y}" stroke="#d62728" stroke-width="2"/><text x="${left + 656}" y="${y}">failed requests (taller = more)</text>`,
  ].join('\n');
}

function loadStart(run: StrategyRun): number {
  return Math.min(run.load?.keepAlive.startedAt ?? Infinity, run.load?.fresh.startedAt ?? Infinity, run.handovers[0]?.triggeredAt ?? Infinity);
}

function loadEnd(run: StrategyRun): number {
  return Math.max(run.load?.keepAlive.endedAt ?? 0, run.load?.fresh.endedAt ?? 0);
}

const f1 = (n: number) => n.toFixed(1);

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
