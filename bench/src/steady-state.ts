/**
 * Steady-state cost: connections/s and requests/s through
 *   (a) a plain http.Server listening itself,
 *   (b) listener.serve(server),
 *   (c) for await (const socket of listener) server.emit('connection', socket),
 *   (d) listener.connections().subscribe(...),
 * measured A/B interleaved: every round measures every variant, in a rotated
 * order, and each variant is reported as its ratio to (a) in the same round.
 * Servers share one CPU, the load process gets the other (taskset).
 */
import { join } from 'node:path';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { spread, type Spread } from './lib/stats.ts';
import { connectionsPerSecond, requestsPerSecond, type ThroughputResult } from './load/throughput.ts';

export interface SteadyStateOptions {
  rounds: number;
  /** Length of one measurement (whole seconds: autocannon's unit). */
  durationS: number;
  /** Concurrent connections of the load. */
  connections: number;
  serverCpu: number;
  clientCpu: number;
  tmpDir: string;
}

export interface Variant {
  id: string;
  label: string;
  script: string;
  env: Record<string, string>;
}

export const VARIANTS: Variant[] = [
  { id: 'plain', label: '(a) plain http.Server', script: APPS.plain, env: {} },
  { id: 'serve', label: '(b) listener.serve(server)', script: APPS.ecdysis, env: { ACCEPT: 'serve' } },
  { id: 'iterator', label: '(c) for await (socket of listener)', script: APPS.ecdysis, env: { ACCEPT: 'iterator' } },
  { id: 'observable', label: '(d) listener.connections() Observable', script: APPS.ecdysis, env: { ACCEPT: 'observable' } },
];

export interface VariantResult {
  id: string;
  label: string;
  connectionsPerSecond: Spread;
  requestsPerSecond: Spread;
  /** Ratio to (a) measured in the same round. */
  connectionsRatio: Spread;
  requestsRatio: Spread;
  /** Highest CPU use of the load process (near 1: the client was the limit). */
  maxClientCpu: number;
  errors: number;
}

export interface SteadyStateResult {
  options: Omit<SteadyStateOptions, 'tmpDir'>;
  variants: VariantResult[];
}

export async function measureSteadyState(options: SteadyStateOptions): Promise<SteadyStateResult> {
  const log = new LifecycleLog(join(options.tmpDir, 'steady-state.jsonl'));
  const servers = await Promise.all(
    VARIANTS.map(async (variant) => {
      const port = await freePort();
      const child = launchApp({ script: variant.script, log, cpu: options.serverCpu, env: { ...variant.env, PORT: String(port) } });
      return { variant, port, child };
    }),
  );
  const cps = new Map<string, ThroughputResult[]>(VARIANTS.map((v) => [v.id, []]));
  const rps = new Map<string, ThroughputResult[]>(VARIANTS.map((v) => [v.id, []]));
  try {
    await log.waitForServing(servers.length, 15_000);
    const measure = (port: number, durationS: number) => ({
      cps: () => connectionsPerSecond({ port, connections: options.connections, durationMs: durationS * 1000 }, options.clientCpu),
      rps: () => requestsPerSecond({ port, connections: options.connections, durationS }, options.clientCpu),
    });
    // Warm-up (JIT, socket buffers), not recorded.
    for (const { port } of servers) {
      await measure(port, 1).cps();
      await measure(port, 1).rps();
    }
    for (let round = 0; round < options.rounds; round++) {
      const order = servers.map((_, i) => servers[(i + round) % servers.length]!);
      for (const { variant, port } of order) {
        const m = measure(port, options.durationS);
        cps.get(variant.id)!.push(await m.cps());
        rps.get(variant.id)!.push(await m.rps());
      }
    }
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
  }
  const ratios = (results: Map<string, ThroughputResult[]>, id: string) => {
    const base = results.get('plain')!;
    return results.get(id)!.map((r, round) => r.perSecond / base[round]!.perSecond);
  };
  return {
    options: { rounds: options.rounds, durationS: options.durationS, connections: options.connections, serverCpu: options.serverCpu, clientCpu: options.clientCpu },
    variants: VARIANTS.map((variant) => {
      const all = [...cps.get(variant.id)!, ...rps.get(variant.id)!];
      return {
        id: variant.id,
        label: variant.label,
        connectionsPerSecond: spread(cps.get(variant.id)!.map((r) => r.perSecond)),
        requestsPerSecond: spread(rps.get(variant.id)!.map((r) => r.perSecond)),
        connectionsRatio: spread(ratios(cps, variant.id)),
        requestsRatio: spread(ratios(rps, variant.id)),
        maxClientCpu: Math.max(...all.map((r) => r.clientCpu)),
        errors: all.reduce((n, r) => n + r.errors, 0),
      };
    }),
  };
}
