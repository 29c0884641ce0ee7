/**
 * Steady-state cost: connections/s and requests/s through
 *   (a) a plain http.Server listening itself,
 *   (b) listener.serve(server),
 *   (c) for await (const socket of listener) server.emit('connection', socket),
 *   (d) listener.connections().subscribe(...),
 * measured A/B interleaved: every round measures every variant, in a rotated
 * order, and each variant is reported as its ratio to (a) in the same round.
 * Servers share one CPU, the load process gets the other (taskset). Next to
 * the throughput, the server's own CPU time per connection and per request
 * (from /proc): when the load generator is the bottleneck, throughput ratios
 * flatten towards 1, CPU per request does not.
 */
import { join } from 'node:path';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { cpuTimeMs } from './lib/proc.ts';
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

/** One load kind through one variant. */
export interface Measured {
  perSecond: Spread;
  /** Ratio of perSecond to (a)'s in the same round. */
  ratio: Spread;
  /** Server CPU time per connection or request, µs. */
  serverCpuUs: Spread;
  /** Ratio of serverCpuUs to (a)'s in the same round. */
  cpuRatio: Spread;
  /** Server CPU busy fraction during the measurements (median). */
  serverBusy: number;
  /** Load process CPU busy fraction (median): near 1 means the client was the limit. */
  clientBusy: number;
  errors: number;
}

export interface VariantResult {
  id: string;
  label: string;
  connections: Measured;
  requests: Measured;
}

export interface SteadyStateResult {
  options: Omit<SteadyStateOptions, 'tmpDir'>;
  variants: VariantResult[];
}

interface Sample extends ThroughputResult {
  serverCpuMs: number;
}

type Kind = 'connections' | 'requests';

export async function measureSteadyState(options: SteadyStateOptions): Promise<SteadyStateResult> {
  const log = new LifecycleLog(join(options.tmpDir, 'steady-state.jsonl'));
  const servers = await Promise.all(
    VARIANTS.map(async (variant) => {
      const port = await freePort();
      const child = launchApp({ script: variant.script, log, cpu: options.serverCpu, env: { ...variant.env, PORT: String(port) } });
      return { variant, port, pid: child.pid!, child };
    }),
  );
  const samples = new Map<string, Record<Kind, Sample[]>>(VARIANTS.map((v) => [v.id, { connections: [], requests: [] }]));
  const measure = async (server: (typeof servers)[number], kind: Kind, durationS: number): Promise<Sample> => {
    const cpuBefore = cpuTimeMs(server.pid);
    const result =
      kind === 'connections'
        ? await connectionsPerSecond({ port: server.port, connections: options.connections, durationMs: durationS * 1000 }, options.clientCpu)
        : await requestsPerSecond({ port: server.port, connections: options.connections, durationS }, options.clientCpu);
    return { ...result, serverCpuMs: cpuTimeMs(server.pid) - cpuBefore };
  };
  try {
    await log.waitForServing(servers.length, 15_000);
    // Warm-up (JIT, socket buffers), not recorded.
    for (const server of servers) {
      await measure(server, 'connections', 1);
      await measure(server, 'requests', 1);
    }
    for (let round = 0; round < options.rounds; round++) {
      const order = servers.map((_, i) => servers[(i + round) % servers.length]!);
      for (const server of order) {
        for (const kind of ['connections', 'requests'] as const) samples.get(server.variant.id)![kind].push(await measure(server, kind, options.durationS));
      }
    }
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
  }
  const summarise = (id: string, kind: Kind): Measured => {
    const own = samples.get(id)![kind];
    const base = samples.get('plain')![kind];
    const cpuUs = (s: Sample) => (s.serverCpuMs * 1000) / s.completed;
    return {
      perSecond: spread(own.map((s) => s.perSecond)),
      ratio: spread(own.map((s, round) => s.perSecond / base[round]!.perSecond)),
      serverCpuUs: spread(own.map(cpuUs)),
      cpuRatio: spread(own.map((s, round) => cpuUs(s) / cpuUs(base[round]!))),
      serverBusy: spread(own.map((s) => s.serverCpuMs / s.elapsedMs)).median,
      clientBusy: spread(own.map((s) => s.clientCpu)).median,
      errors: own.reduce((n, s) => n + s.errors, 0),
    };
  };
  const { tmpDir: _tmp, ...reported } = options;
  return {
    options: reported,
    variants: VARIANTS.map((v) => ({ id: v.id, label: v.label, connections: summarise(v.id, 'connections'), requests: summarise(v.id, 'requests') })),
  };
}
