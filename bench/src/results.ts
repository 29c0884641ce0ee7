/** Everything one `npm run bench` measured: written as results/results.json, rendered by report/markdown.ts. */
import type { DatagramsResult } from './datagrams.ts';
import type { GrowthResult } from './growth.ts';
import type { HandoffResult } from './handoff.ts';
import type { Http2Result } from './http2.ts';
import type { CompileCacheResult } from './compile-cache.ts';
import type { ImportCost } from './imports.ts';
import type { MemoryResult } from './memory.ts';
import type { MulticoreResult } from './multicore.ts';
import type { StallResult } from './stall.ts';
import type { Machine } from './report/machine.ts';
import type { SteadyStateResult } from './steady-state.ts';
import type { UpgradeSummary } from './upgrade/analyse.ts';
import type { UpgradeRunOptions } from './upgrade/run.ts';

export interface BenchResults {
  machine: Machine;
  /** Wall time of the whole run, seconds. */
  elapsedS: number;
  upgrade?: { options: Omit<UpgradeRunOptions, 'tmpDir'>; strategies: UpgradeSummary[] };
  steadyState?: SteadyStateResult;
  memory?: MemoryResult[];
  imports?: ImportCost[];
  growth?: GrowthResult;
  datagrams?: DatagramsResult;
  handoff?: HandoffResult;
  http2?: Http2Result;
  compileCache?: CompileCacheResult;
  multicore?: MulticoreResult;
  stall?: StallResult;
}
