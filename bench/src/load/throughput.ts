/** The two steady-state throughput measurements, each in its own process. */
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { pinned, spawnTracked, stopChild } from '../lib/children.ts';
import { runToolProcess } from './tool-process.ts';

export interface ThroughputResult {
  completed: number;
  errors: number;
  elapsedMs: number;
  perSecond: number;
  /** CPU time of the load process over wall time: near 1 means the client, not the server, was the limit. */
  clientCpu: number;
}

export interface RequestsPerSecondOptions {
  port: number;
  connections: number;
  durationS: number;
}

export interface ConnectionsPerSecondOptions {
  port: number;
  connections: number;
  durationMs: number;
}

export function requestsPerSecond(options: RequestsPerSecondOptions, cpu?: number): Promise<ThroughputResult> {
  return runToolProcess<ThroughputResult>('./requests-per-second-process.ts', options, cpu);
}

export function connectionsPerSecond(options: ConnectionsPerSecondOptions, cpu?: number): Promise<ThroughputResult> {
  return runToolProcess<ThroughputResult>('./connections-per-second-process.ts', options, cpu);
}

/** One server's share of a keep-alive driver run. */
export interface DriverRun {
  completed: number;
  errors: number;
  elapsedMs: number;
}

/** A long-lived keep-alive load process (keep-alive-driver-process.ts): fixed numbers of requests on command. */
export interface KeepAliveDriver {
  pid: number;
  /** Open `connections` keep-alive connections to the server on `port`, known as `id` from now on. */
  open(id: string, port: number, connections: number): Promise<void>;
  /** `requests` requests to each server named, all at the same time; resolves when all are answered. */
  run(ids: string[], requests: number): Promise<Record<string, DriverRun>>;
  /** `count` new connections (one `Connection: close` request each) to each server named, `concurrency` at a time each, all servers at the same time. */
  connect(ids: string[], count: number, concurrency: number): Promise<Record<string, DriverRun>>;
  /** Close every connection opened so far and forget the servers. */
  closeAll(): Promise<void>;
  stop(): Promise<void>;
}

export function startKeepAliveDriver(cpu?: number): KeepAliveDriver {
  const path = fileURLToPath(new URL('./keep-alive-driver-process.ts', import.meta.url));
  const [command, args] = pinned(cpu, process.execPath, ['--import', 'tsx', path]);
  const child = spawnTracked(command, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const replies = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const ask = async (command: object): Promise<{ results?: Record<string, DriverRun> }> => {
    child.stdin!.write(`${JSON.stringify(command)}\n`);
    const reply = await replies.next();
    if (reply.done) throw new Error(`the keep-alive driver exited (${child.exitCode ?? child.signalCode})`);
    const answer = JSON.parse(reply.value) as { ok: boolean; error?: string; results?: Record<string, DriverRun> };
    if (!answer.ok) throw new Error(`keep-alive driver: ${answer.error}`);
    return answer;
  };
  return {
    pid: child.pid!,
    open: async (id, port, connections) => void (await ask({ op: 'open', id, port, connections })),
    run: async (ids, requests) => (await ask({ op: 'run', ids, requests })).results!,
    connect: async (ids, count, concurrency) => (await ask({ op: 'connect', ids, requests: count, connections: concurrency })).results!,
    closeAll: async () => void (await ask({ op: 'close' })),
    stop: async () => {
      child.stdin!.end();
      await stopChild(child);
    },
  };
}
