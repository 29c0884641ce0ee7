/** A way of restarting the service, as the upgrade-under-load run drives it. */
import type { LifecycleLog } from '../lib/lifecycle-log.ts';

export interface StrategyContext {
  port: number;
  /** Where every process of this strategy records serving/exit. */
  log: LifecycleLog;
  /** Scratch directory of this strategy (pm2 home...). */
  tmpDir: string;
}

/** One running instance of a strategy. */
export interface RunningStrategy {
  /** Start the service (the runner then waits for `instances` serving records). */
  start(): Promise<void>;
  /** Restart it. Resolves when the trigger has done its part (a command returned, a signal was sent). */
  trigger(): Promise<void>;
  /** Stop everything this strategy started; safe to call on any path, more than once. */
  stop(): Promise<void>;
}

export interface Strategy {
  readonly id: string;
  readonly label: string;
  /** Processes serving at once; a restart is complete when this many new ones serve. */
  readonly instances: number;
  create(context: StrategyContext): RunningStrategy;
}
