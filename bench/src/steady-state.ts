/**
 * Steady-state cost: connections/s and requests/s through
 *   (a) a plain http.Server listening itself,
 *   (b) listener.serve(server),
 *   (c) for await (const socket of listener) server.emit('connection', socket),
 *   (d) listener.connections().subscribe(...),
 * each reported as its ratio to (a) measured in the same round. Servers share
 * one CPU, the load process gets the other (taskset). Next to the throughput,
 * the server's own CPU time per connection and per request: when the load
 * generator is the bottleneck, throughput ratios flatten towards 1, CPU per
 * request does not. Server CPU is read from outside, in ns, summed over the
 * server's threads (/proc/<pid>/task/<tid>/schedstat).
 *
 * New connections: rounds of `durationS` per variant, interleaved in a rotated
 * order. Keep-alive requests: each round runs every variant side by side with
 * (a), at the same time on the same CPU, a fixed number of requests each, from
 * one load process that keeps its connections open: whatever else the machine
 * does during the round (other processes, cache and frequency effects) falls on
 * both servers of the pair alike, where sequential rounds of a few seconds each
 * saw it fall on one and not the other (per-round ratios from 0.93 to 1.57).
 */
import { join } from 'node:path';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { cpuTimeNs } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';
import { connectionsPerSecond, startKeepAliveDriver, type ThroughputResult } from './load/throughput.ts';

export interface SteadyStateOptions {
  rounds: number;
  /** Length of one measurement of connections/s, s. */
  durationS: number;
  /** Keep-alive rounds: each runs every variant next to (a), this many requests to each server. */
  requestRounds: number;
  requestsPerRound: number;
  /** Keep-alive rounds run first and not recorded (JIT, socket buffers). */
  requestWarmupRounds: number;
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
  const [plain, ...others] = servers;
  const cpuMs = (pid: number) => cpuTimeNs(pid) / 1e6;
  /** Per variant and kind, one sample per round; for (a)'s requests, the one it paired with each variant. */
  const samples = new Map<string, Record<Kind, Sample[]>>(VARIANTS.map((v) => [v.id, { connections: [], requests: [] }]));
  const plainPaired = new Map<string, Sample[]>(VARIANTS.map((v) => [v.id, []]));
  const connections = async (server: (typeof servers)[number], durationS: number): Promise<Sample> => {
    const cpuBefore = cpuMs(server.pid);
    const result = await connectionsPerSecond({ port: server.port, connections: options.connections, durationMs: durationS * 1000 }, options.clientCpu);
    return { ...result, serverCpuMs: cpuMs(server.pid) - cpuBefore };
  };
  const driver = startKeepAliveDriver(options.clientCpu);
  /** (a) and `other` side by side, the same number of requests each. */
  const requestPair = async (other: (typeof servers)[number]): Promise<[Sample, Sample]> => {
    const pair = [plain!, other];
    const before = pair.map((s) => cpuMs(s.pid));
    const clientBefore = cpuMs(driver.pid);
    const startedAt = performance.now();
    const results = await driver.run(pair.map((s) => s.variant.id), options.requestsPerRound);
    const wall = performance.now() - startedAt;
    const clientCpu = (cpuMs(driver.pid) - clientBefore) / wall;
    return pair.map((server, i) => {
      const r = results[server.variant.id]!;
      if (r.completed === 0) throw new Error(`keep-alive round: no request answered by ${server.variant.label} (${r.errors} errors)`);
      return { completed: r.completed, errors: r.errors, elapsedMs: r.elapsedMs, perSecond: (r.completed / r.elapsedMs) * 1000, clientCpu, serverCpuMs: cpuMs(server.pid) - before[i]! };
    }) as [Sample, Sample];
  };
  try {
    await log.waitForServing(servers.length, 15_000);
    // Warm-up (JIT, socket buffers), not recorded.
    for (const server of servers) await connections(server, 1);
    for (let round = 0; round < options.rounds; round++) {
      const order = servers.map((_, i) => servers[(i + round) % servers.length]!);
      for (const server of order) samples.get(server.variant.id)!.connections.push(await connections(server, options.durationS));
    }
    for (const server of servers) await driver.open(server.variant.id, server.port, options.connections);
    for (let round = 0; round < options.requestWarmupRounds; round++) for (const other of others) await requestPair(other);
    for (let round = 0; round < options.requestRounds; round++) {
      const order = others.map((_, i) => others[(i + round) % others.length]!);
      for (const other of order) {
        const [base, own] = await requestPair(other);
        samples.get(other.variant.id)!.requests.push(own);
        samples.get(plain!.variant.id)!.requests.push(base);
        plainPaired.get(other.variant.id)!.push(base);
      }
    }
  } finally {
    await driver.stop();
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
  }
  const summarise = (id: string, kind: Kind): Measured => {
    const own = samples.get(id)![kind];
    const base = kind === 'requests' && id !== 'plain' ? plainPaired.get(id)! : samples.get('plain')![kind];
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
