/**
 * ecdysis: SIGHUP to the current generation; it spawns the next one with the
 * listening socket, waits for its ready(), stops accepting, drains, exits.
 */
import type { ChildProcess } from 'node:child_process';
import { APPS, launchApp } from '../../apps.ts';
import { stopChild, terminatePid } from '../../lib/children.ts';
import type { Strategy } from '../strategy.ts';

export function ecdysisStrategy(script: string, id: string, label: string, env: Record<string, string> = {}): Strategy {
  return {
    id,
    label,
    instances: 1,
    create(context) {
      let first: ChildProcess | undefined;
      const current = () => context.log.serving().at(-1);
      return {
        async start() {
          // No events() subscription (BENCH_EVENTS=0): it would load rxjs in each new generation, inside
          // the window, as the instrument's cost; the bare supervisor's workers load nothing either.
          first = launchApp({ script, log: context.log, env: { BENCH_EVENTS: '0', ...env, PORT: String(context.port) } });
        },
        async trigger() {
          const pid = current();
          if (pid === undefined) throw new Error('no ecdysis generation is serving');
          process.kill(pid, 'SIGHUP');
        },
        async stop() {
          // Later generations are not our children: stop the serving one by pid.
          const pid = current();
          if (pid !== undefined) await terminatePid(pid);
          if (first) await stopChild(first);
        },
      };
    },
  };
}

export const ecdysis = ecdysisStrategy(APPS.ecdysis, 'ecdysis', 'ecdysis (SIGHUP)');

/** The same with the successor started 10 nicer until it is ready (option niceWhileStarting; the bench runs as root). */
export const ecdysisNice = ecdysisStrategy(APPS.ecdysis, 'ecdysis-nice', 'ecdysis (SIGHUP), `niceWhileStarting: 10`', { NICE_WHILE_STARTING: '10' });

/** Milder: `niceWhileStarting: 3` (not in the default run; for choosing a default). */
export const ecdysisNice3 = ecdysisStrategy(APPS.ecdysis, 'ecdysis-nice3', 'ecdysis (SIGHUP), `niceWhileStarting: 3`', { NICE_WHILE_STARTING: '3' });

/**
 * ecdysis with option `workers`: a primary and `count` workers. SIGHUP to the
 * current primary; the hand-over is complete when `count` new workers serve
 * and the old ones have exited.
 */
export function ecdysisWorkersStrategy(count: number, id = `ecdysis-workers-${count}`, label = `ecdysis (SIGHUP), \`workers: ${count}\``, env: Record<string, string> = {}): Strategy {
  return {
    id,
    label,
    instances: count,
    create(context) {
      let first: ChildProcess | undefined;
      const primary = () => {
        const records = context.log.records();
        const exited = new Set(records.filter((r) => r.event === 'exit').map((r) => r.pid));
        return records.filter((r) => r.event === 'primary' && !exited.has(r.pid)).at(-1)?.pid;
      };
      return {
        async start() {
          first = launchApp({ script: APPS.ecdysis, log: context.log, env: { BENCH_EVENTS: '0', ...env, WORKERS: String(count), PORT: String(context.port) } });
        },
        async trigger() {
          const pid = primary();
          if (pid === undefined) throw new Error('no ecdysis primary is serving');
          process.kill(pid, 'SIGHUP');
        },
        async stop() {
          const pid = primary();
          if (pid !== undefined) await terminatePid(pid);
          if (first) await stopChild(first);
        },
      };
    },
  };
}

export const ecdysisWorkers2 = ecdysisWorkersStrategy(2);

/** The same with `niceWhileStarting: 10`: the new primary and its workers start 10 nicer until ready. */
export const ecdysisWorkers2Nice = ecdysisWorkersStrategy(2, 'ecdysis-workers-2-nice', 'ecdysis (SIGHUP), `workers: 2`, `niceWhileStarting: 10`', { NICE_WHILE_STARTING: '10' });
