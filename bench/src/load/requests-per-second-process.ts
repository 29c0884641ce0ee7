/**
 * Requests per second over keep-alive connections, with autocannon. Used for
 * throughput only: autocannon reconnects and resends silently when a server
 * closes a connection, so its error and latency figures are not trusted here.
 *
 *   node --import tsx requests-per-second-process.ts '{"port":8080,"connections":16,"durationS":3}'
 */
import autocannon from 'autocannon';
import type { RequestsPerSecondOptions, ThroughputResult } from './throughput.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as RequestsPerSecondOptions;
const cpuAtStart = process.cpuUsage();
const result = await autocannon({
  url: `http://127.0.0.1:${options.port}/`,
  connections: options.connections,
  duration: options.durationS,
  timeout: 10,
});
const completed = result['2xx'];
const elapsedMs = result.duration * 1000;
const cpu = process.cpuUsage(cpuAtStart);
const summary: ThroughputResult = {
  completed,
  errors: result.errors + result.non2xx + result.timeouts,
  elapsedMs,
  perSecond: completed / result.duration,
  clientCpu: (cpu.user + cpu.system) / 1000 / elapsedMs,
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
