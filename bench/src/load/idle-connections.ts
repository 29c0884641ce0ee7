/** Open idle keep-alive connections from a helper process (see idle-connections-process.ts). */
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { exited, spawnTracked, stopChild } from '../lib/children.ts';

export interface IdleConnectionsOptions {
  port: number;
  count: number;
  /** Connections being opened at once. */
  concurrency: number;
}

export interface IdleConnections {
  /** Resolves once every connection is open (or failed to). */
  opened: Promise<{ opened: number; errors: number }>;
  /** Close the rest and say how many the server had closed. */
  close(): Promise<{ closedByServer: number; stillOpen: number }>;
}

const script = fileURLToPath(new URL('./idle-connections-process.ts', import.meta.url));

export function openIdleConnections(options: IdleConnectionsOptions): IdleConnections {
  const child = spawnTracked(process.execPath, ['--import', 'tsx', script, JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const nextJson = async <T>(): Promise<T> => {
    const { value, done } = await lines.next();
    if (done) throw new Error(`idle-connections helper exited (${child.exitCode ?? child.signalCode})`);
    return JSON.parse(value as string) as T;
  };
  const opened = nextJson<{ opened: number; errors: number }>();
  opened.catch(() => {});
  return {
    opened,
    async close() {
      await opened;
      child.stdin!.end('stop\n');
      try {
        return await nextJson<{ closedByServer: number; stillOpen: number }>();
      } finally {
        await Promise.race([exited(child), sleep(5_000)]);
        await stopChild(child);
      }
    },
  };
}
