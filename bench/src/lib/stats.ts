/** Small statistics helpers over plain number arrays. */
import { percentile } from '../../../examples/lib/http-load.ts';

export { percentile };

export function sorted(values: number[]): number[] {
  return [...values].sort((a, b) => a - b);
}

export function median(values: number[]): number {
  return percentile(sorted(values), 50);
}

export interface Spread {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function spread(values: number[]): Spread {
  const s = sorted(values);
  return { median: percentile(s, 50), min: s[0] ?? NaN, max: s[s.length - 1] ?? NaN, n: s.length };
}

export interface LatencySummary {
  n: number;
  p50: number;
  p99: number;
  max: number;
}

/** p50/p99/max of an already sorted array. */
export function latencySummary(sortedValues: number[]): LatencySummary {
  return {
    n: sortedValues.length,
    p50: percentile(sortedValues, 50),
    p99: percentile(sortedValues, 99),
    max: sortedValues[sortedValues.length - 1] ?? NaN,
  };
}
