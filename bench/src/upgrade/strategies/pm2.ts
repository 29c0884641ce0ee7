/**
 * pm2 `reload`, in cluster mode (2 instances: the cluster primary, pm2's
 * daemon, holds the socket and round-robins connections to workers; reload
 * replaces the workers one by one) and in fork mode (1 process that listens
 * itself; pm2 reloads a fork-mode process by restarting it).
 *
 * Driven through pm2's programmatic API from this process, with a PM2_HOME of
 * its own, so the trigger is pm2's reload itself and not the start-up of the
 * pm2 command line. Apps stop pm2's way: SIGINT, process.exit() when closed.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { isAlive } from '../../lib/children.ts';
import { APPS } from '../../apps.ts';
import { onExit } from '../../lib/cleanup.ts';
import type { Strategy } from '../strategy.ts';

/** The slice of pm2's API used here (pm2 ships no types for `custom`). */
interface Pm2Api {
  connect(cb: (err?: Error) => void): void;
  start(options: object, cb: (err?: Error) => void): void;
  reload(name: string, cb: (err?: Error) => void): void;
  killDaemon(cb: (err?: Error) => void): void;
  disconnect(): void;
}
type Pm2Constructor = new (options: { pm2_home: string }) => Pm2Api;

const require = createRequire(import.meta.url);
const APP_NAME = 'bench-http';

function pm2Strategy(mode: 'cluster' | 'fork'): Strategy {
  const instances = mode === 'cluster' ? 2 : 1;
  return {
    id: `pm2-${mode}`,
    label: mode === 'cluster' ? 'pm2 reload, cluster mode (2 instances)' : 'pm2 reload, fork mode',
    instances,
    create(context) {
      const home = join(context.tmpDir, 'pm2-home');
      let api: Pm2Api | undefined;
      let stopped = false;
      const daemonPid = (): number | undefined => {
        try {
          return Number(readFileSync(join(home, 'pm2.pid'), 'utf8'));
        } catch {
          return undefined;
        }
      };
      // Last resort if the run dies before stop(): the daemon by pid (its workers are in the lifecycle log).
      const removeExitHook = onExit(() => {
        const pid = daemonPid();
        if (pid && isAlive(pid)) process.kill(pid, 'SIGKILL');
      });
      return {
        async start() {
          const Custom = (require('pm2') as { custom: Pm2Constructor }).custom;
          api = new Custom({ pm2_home: home });
          await promisify(api.connect.bind(api))();
          await promisify(api.start.bind(api))({
            name: APP_NAME,
            script: APPS.plain,
            exec_mode: mode,
            instances,
            env: { PORT: String(context.port), BENCH_LOG: context.log.file },
            autorestart: false,
            merge_logs: true,
          });
        },
        async trigger() {
          await promisify(api!.reload.bind(api!))(APP_NAME);
        },
        async stop() {
          if (stopped || !api) return;
          stopped = true;
          try {
            await promisify(api.killDaemon.bind(api))();
          } finally {
            api.disconnect();
            const pid = daemonPid();
            if (pid && isAlive(pid)) process.kill(pid, 'SIGKILL');
            removeExitHook();
          }
        },
      };
    },
  };
}

export const pm2Cluster = pm2Strategy('cluster');
export const pm2Fork = pm2Strategy('fork');
