/** Number formatting shared by the report's tables. */
import type { LatencySummary, Spread } from '../lib/stats.ts';

export function ms(value: number): string {
  if (!Number.isFinite(value)) return '–';
  if (value < 10) return value.toFixed(1);
  return Math.round(value).toLocaleString('en-US');
}

export function count(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : '–';
}

/** A per-restart rate: one decimal, 0 as a plain 0. */
export function rate(value: number): string {
  if (value === 0) return '0';
  return value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString('en-US');
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : '–';
}

/** "median (min–max)" in the given unit formatter. */
export function spread(s: Spread, unit: (n: number) => string = ms): string {
  if (s.n === 0) return '–';
  if (s.n === 1 || s.min === s.max) return unit(s.median);
  return `${unit(s.median)} (${unit(s.min)}–${unit(s.max)})`;
}

export function latency(s: LatencySummary): string {
  if (s.n === 0) return '–';
  return `${ms(s.p50)} / ${ms(s.p99)} / ${ms(s.max)}`;
}

export function table(header: string[], rows: string[][]): string {
  const align = header.map((_, i) => (i === 0 ? '---' : '---:'));
  return [header, align, ...rows].map((cells) => `| ${cells.join(' | ')} |`).join('\n');
}
