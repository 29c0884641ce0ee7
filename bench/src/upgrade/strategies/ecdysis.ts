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
          first = launchApp({ script, log: context.log, env: { ...env, PORT: String(context.port) } });
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
