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
import { rssMiB } from './lib/proc.ts';
import { freePort } from './lib/net.ts';
import { spread, type Spread } from './lib/stats.ts';
import { connectionsPerSecond } from './load/throughput.ts';

export interface MemoryOptions {
  repetitions: number;
  /** Idle time before reading RSS. */
  idleMs: number;
  tmpDir: string;
}

export interface MemoryResult {
  id: 'plain' | 'ecdysis';
  label: string;
  /** RSS in MiB, idle after start-up. */
  idleMiB: Spread;
  /** RSS in MiB, idle again after one second of load. */
  afterLoadMiB: Spread;
}

const SERVICES = [
  { id: 'plain', label: 'plain http.Server', script: APPS.plain },
  { id: 'ecdysis', label: 'ecdysis + listener.serve(server)', script: APPS.ecdysis },
] as const;

export async function measureMemory(options: MemoryOptions): Promise<MemoryResult[]> {
  const log = new LifecycleLog(join(options.tmpDir, 'memory.jsonl'));
  const idle = new Map<string, number[]>(SERVICES.map((s) => [s.id, []]));
  const afterLoad = new Map<string, number[]>(SERVICES.map((s) => [s.id, []]));
  try {
    for (let i = 0; i < options.repetitions; i++) {
      for (const service of SERVICES) {
        const port = await freePort();
        const child = launchApp({ script: service.script, log, env: { PORT: String(port) } });
        try {
          await log.waitForPid(child.pid!, 15_000);
          await sleep(options.idleMs);
          idle.get(service.id)!.push(rssMiB(child.pid!));
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
  return SERVICES.map((s) => ({ id: s.id, label: s.label, idleMiB: spread(idle.get(s.id)!), afterLoadMiB: spread(afterLoad.get(s.id)!) }));
}
