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
 * Every round runs every variant side by side with (a), at the same time on
 * the same CPU, a fixed amount of work each (new connections with one request
 * each, then keep-alive requests over connections the load process keeps
 * open), from one long-lived load process: whatever else the machine does
 * during the round (other processes, cache and frequency effects) falls on
 * both servers of the pair alike, where sequential rounds of a few seconds each
 * saw it fall on one and not the other (per-round ratios from 0.93 to 1.57).
 * One process per variant for the whole run, warmed up first: a young ecdysis
 * process costs more per new connection for its first seconds (fresh
 * processes per round measured 1.2 to 1.4 for connections), and the ratios
 * here are of processes at steady state. How one process differs from the
 * next (JIT decisions, heap layout) is not sampled: it moved the keep-alive
 * median by about ±2% from one run to the next.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { freePort } from './lib/net.ts';
import { cpuTimeNs } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';
import { startKeepAliveDriver, type ThroughputResult } from './load/throughput.ts';

export interface SteadyStateOptions {
  /** Recorded rounds; each runs every variant next to (a). */
  rounds: number;
  /** Rounds run first and not recorded (JIT, socket buffers, a young process's start). */
  warmupRounds: number;
  /** New connections (one request each) to each server of a pair, per round. */
  connectionsPerRound: number;
  /** Keep-alive requests to each server of a pair, per round. */
  requestsPerRound: number;
  /** Concurrent connections of the load, per server. */
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
  const cpuMs = (pid: number) => cpuTimeNs(pid) / 1e6;
  /** Per variant and kind, one sample per round; (a)'s are the ones it ran next to that variant. */
  const samples = new Map<string, Record<Kind, Sample[]>>(VARIANTS.map((v) => [v.id, { connections: [], requests: [] }]));
  const plainNextTo = new Map<string, Record<Kind, Sample[]>>(VARIANTS.map((v) => [v.id, { connections: [], requests: [] }]));
  const driver = startKeepAliveDriver(options.clientCpu);
  type Server = { variant: Variant; port: number; pid: number; child: ChildProcess };
  let servers: Server[] = [];
  /** (a) and `other` side by side, the same amount of work each. */
  const pair = async (plain: Server, other: Server, kind: Kind, amount: number): Promise<[Sample, Sample]> => {
    const both = [plain, other];
    const ids = both.map((s) => s.variant.id);
    const before = both.map((s) => cpuMs(s.pid));
    const clientBefore = cpuMs(driver.pid);
    const startedAt = performance.now();
    const results = kind === 'requests' ? await driver.run(ids, amount) : await driver.connect(ids, amount, options.connections);
    const wall = performance.now() - startedAt;
    const clientCpu = (cpuMs(driver.pid) - clientBefore) / wall;
    return both.map((server, i) => {
      const r = results[server.variant.id]!;
      if (r.completed === 0) throw new Error(`steady state (${kind}): nothing answered by ${server.variant.label} (${r.errors} errors)`);
      return { completed: r.completed, errors: r.errors, elapsedMs: r.elapsedMs, perSecond: (r.completed / r.elapsedMs) * 1000, clientCpu, serverCpuMs: cpuMs(server.pid) - before[i]! };
    }) as [Sample, Sample];
  };
  try {
    servers = await Promise.all(
      VARIANTS.map(async (variant) => {
        const port = await freePort();
        const child = launchApp({ script: variant.script, log, cpu: options.serverCpu, env: { ...variant.env, PORT: String(port) } });
        return { variant, port, pid: child.pid!, child };
      }),
    );
    await log.waitForServing(servers.length, 15_000);
    for (const server of servers) await driver.open(server.variant.id, server.port, options.connections);
    const [plain, ...others] = servers;
    for (let round = -options.warmupRounds; round < options.rounds; round++) {
      // A rotated order, so that no variant always runs first.
      const order = others.map((_, i) => others[(i + Math.max(round, 0)) % others.length]!);
      for (const [kind, amount] of [
        ['connections', options.connectionsPerRound],
        ['requests', options.requestsPerRound],
      ] as const) {
        for (const other of order) {
          const [base, own] = await pair(plain!, other, kind, amount);
          if (round < 0) continue;
          samples.get(other.variant.id)![kind].push(own);
          samples.get(plain!.variant.id)![kind].push(base);
          plainNextTo.get(other.variant.id)![kind].push(base);
        }
      }
    }
  } finally {
    await driver.stop();
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
  }
  const plainId = VARIANTS[0]!.id;
  const summarise = (id: string, kind: Kind): Measured => {
    const own = samples.get(id)![kind];
    const base = id === plainId ? own : plainNextTo.get(id)![kind];
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
