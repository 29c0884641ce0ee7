/**
 * Naive restart: stop the process (SIGTERM: graceful server.close()), wait for
 * it to exit, start the new one. Nothing listens in between.
 */
import type { ChildProcess } from 'node:child_process';
import { APPS, launchApp } from '../../apps.ts';
import { exited, stopChild } from '../../lib/children.ts';
import type { Strategy } from '../strategy.ts';

export function naiveStrategy(script: string, id: string, label: string): Strategy {
  return {
    id,
    label,
    instances: 1,
    create(context) {
      let current: ChildProcess | undefined;
      const start = async () => {
        current = launchApp({ script, log: context.log, env: { PORT: String(context.port) } });
      };
      return {
        start,
        async trigger() {
          const old = current!;
          old.kill('SIGTERM');
          await exited(old);
          await start();
        },
        async stop() {
          if (current) await stopChild(current);
        },
      };
    },
  };
}

export const naive = naiveStrategy(APPS.plain, 'naive', 'naive restart (stop, then start)');
