/**
 * Naive restart: stop the process (SIGTERM: graceful server.close()), wait for
 * it to exit, start the new one. Nothing listens in between.
 */
import type { ChildProcess } from 'node:child_process';
import { APPS, launchApp } from '../../apps.ts';
import { exited, stopChild } from '../../lib/children.ts';
import type { Strategy } from '../strategy.ts';

export const naive: Strategy = {
  id: 'naive',
  label: 'naive restart (stop, then start)',
  instances: 1,
  create(context) {
    let current: ChildProcess | undefined;
    const start = async () => {
      current = launchApp({ script: APPS.plain, log: context.log, env: { PORT: String(context.port) } });
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
