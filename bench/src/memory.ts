/**
 * Memory: resident set size of the idle service, without and with ecdysis,
 * read from /proc/<pid>/status (VmRSS) by the driver, so nothing runs inside
 * the measured process. Each repetition starts both services fresh.
 */
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { minorFaults, rssByMapping, rssMiB, type MappingKind } from './lib/proc.ts';
import { freePort } from './lib/net.ts';
import { median, spread, type Spread } from './lib/stats.ts';
import { connectionsPerSecond } from './load/throughput.ts';

export interface MemoryOptions {
  repetitions: number;
  /** Idle time before reading RSS. */
  idleMs: number;
  tmpDir: string;
}

export interface MemoryResult {
  id: (typeof SERVICES)[number]['id'];
  label: string;
  /** RSS in MiB, idle after start-up. */
  idleMiB: Spread;
  /** RSS in MiB, idle again after one second of load. */
  afterLoadMiB: Spread;
  /** Minor page faults from the process's start to the idle reading (median): pages first touched. */
  idleFaults?: Spread;
  /** Idle RSS by mapping (KiB, median of the repetitions): where the memory is. */
  idleByMapping?: Record<MappingKind, number>;
  /** Each repetition's readings, in order (repetitions start every service once, so index i of two services is a pair). */
  idleRuns?: number[];
  afterLoadRuns?: number[];
}

/**
 * The ecdysis app records its lifecycle for the driver through `events()`, an
 * rxjs Observable: rxjs is loaded only for that, so the service is measured
 * without it too (BENCH_EVENTS=0), as an application that never asks for an
 * Observable runs.
 */
const SERVICES = [
  { id: 'plain', label: 'plain http.Server', script: APPS.plain, env: {} },
  { id: 'ecdysis', label: 'ecdysis + listener.serve(server)', script: APPS.ecdysis, env: { BENCH_EVENTS: '0' } },
  { id: 'ecdysis-events', label: 'the same + `ecdysis.events().subscribe()` (loads rxjs\'s Observable)', script: APPS.ecdysis, env: {} },
] as const;

export async function measureMemory(options: MemoryOptions): Promise<MemoryResult[]> {
  const log = new LifecycleLog(join(options.tmpDir, 'memory.jsonl'));
  const idle = new Map<string, number[]>(SERVICES.map((s) => [s.id, []]));
  const afterLoad = new Map<string, number[]>(SERVICES.map((s) => [s.id, []]));
  const byMapping = new Map<string, Record<MappingKind, number>[]>(SERVICES.map((s) => [s.id, []]));
  const faults = new Map<string, number[]>(SERVICES.map((s) => [s.id, []]));
  try {
    for (let i = 0; i < options.repetitions; i++) {
      for (const service of SERVICES) {
        const port = await freePort();
        const child = launchApp({ script: service.script, log, env: { ...service.env, PORT: String(port) } });
        try {
          await log.waitForPid(child.pid!, 15_000);
          await sleep(options.idleMs);
          idle.get(service.id)!.push(rssMiB(child.pid!));
          faults.get(service.id)!.push(minorFaults(child.pid!));
          byMapping.get(service.id)!.push(rssByMapping(child.pid!));
          await connectionsPerSecond({ port, connections: 8, durationMs: 1000 });
          await sleep(options.idleMs);
          afterLoad.get(service.id)!.push(rssMiB(child.pid!));
        } finally {
          await stopChild(child);
        }
      }
    }
  } finally {
    log.killAll();
  }
  return SERVICES.map((s) => ({
    id: s.id,
    label: s.label,
    idleMiB: spread(idle.get(s.id)!),
    afterLoadMiB: spread(afterLoad.get(s.id)!),
    idleFaults: spread(faults.get(s.id)!),
    idleByMapping: medianByMapping(byMapping.get(s.id)!),
    idleRuns: idle.get(s.id)!,
    afterLoadRuns: afterLoad.get(s.id)!,
  }));
}

function medianByMapping(readings: Record<MappingKind, number>[]): Record<MappingKind, number> | undefined {
  if (readings.length === 0) return undefined;
  const kinds = Object.keys(readings[0]!) as MappingKind[];
  return Object.fromEntries(kinds.map((kind) => [kind, median(readings.map((r) => r[kind]))])) as Record<MappingKind, number>;
}
