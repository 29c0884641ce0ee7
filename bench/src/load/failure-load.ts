/**
 * The failure-counting load of the upgrade runs: examples/lib's HttpLoad (no
 * retries, every failure kind counted), in two processes of its own: one with
 * keep-alive clients, one with a new connection per request.
 */
import { startLoadProcess, type LoadProcess } from '../../../examples/lib/load-runner.ts';
import type { LoadReport } from '../../../examples/lib/http-load.ts';

export interface MixedLoadOptions {
  port: number;
  keepAliveClients: number;
  freshClients: number;
  /** Per-request timeout. */
  timeoutMs: number;
  /** Hard bound on the run; stop() normally ends it first. */
  durationMs: number;
}

export interface MixedLoadReport {
  keepAlive: LoadReport;
  fresh: LoadReport;
}

export interface MixedLoad {
  started: Promise<void>;
  stop(): Promise<MixedLoadReport>;
  kill(): void;
}

export function startMixedLoad(options: MixedLoadOptions): MixedLoad {
  const common = { port: options.port, timeoutMs: options.timeoutMs, durationMs: options.durationMs, samples: true };
  const processes: LoadProcess[] = [
    startLoadProcess({ ...common, keepAliveClients: options.keepAliveClients, freshClients: 0 }),
    startLoadProcess({ ...common, keepAliveClients: 0, freshClients: options.freshClients }),
  ];
  const [keepAlive, fresh] = processes as [LoadProcess, LoadProcess];
  return {
    started: Promise.all(processes.map((p) => p.started)).then(() => {}),
    async stop() {
      const [keepAliveReport, freshReport] = await Promise.all([keepAlive.stop(), fresh.stop()]);
      return { keepAlive: keepAliveReport, fresh: freshReport };
    },
    kill() {
      for (const p of processes) p.kill();
    },
  };
}
