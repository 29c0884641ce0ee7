/** The two steady-state throughput measurements, each in its own process. */
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
