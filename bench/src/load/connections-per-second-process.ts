/**
 * Connections per second: each of `connections` loops opens a TCP connection,
 * sends one `Connection: close` request, reads the response to the end, and
 * starts over. Raw sockets, so that the client costs far less than the server
 * it measures (node:http's client would be the bottleneck). Throughput only.
 *
 *   node --import tsx connections-per-second-process.ts '{"port":8080,"connections":16,"durationMs":3000}'
 */
import { connect } from 'node:net';
import type { ConnectionsPerSecondOptions, ThroughputResult } from './throughput.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as ConnectionsPerSecondOptions;
const request = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');
const started = performance.now();
const cpuAtStart = process.cpuUsage();
const deadline = started + options.durationMs;
let completed = 0;
let errors = 0;

function once(): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: options.port, noDelay: true });
    let head = '';
    socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => {
      if (head.length < 12) head += chunk.toString('latin1', 0, 12);
    });
    socket.on('end', () => {
      if (head.startsWith('HTTP/1.1 200')) completed++;
      else errors++;
    });
    socket.on('error', () => errors++);
    socket.on('close', () => resolve());
  });
}

async function loop(): Promise<void> {
  while (performance.now() < deadline) await once();
}

await Promise.all(Array.from({ length: options.connections }, loop));
const elapsedMs = performance.now() - started;
const cpu = process.cpuUsage(cpuAtStart);
const clientCpu = (cpu.user + cpu.system) / 1000 / elapsedMs;
const summary: ThroughputResult = { completed, errors, elapsedMs, perSecond: (completed / elapsedMs) * 1000, clientCpu };
process.stdout.write(`${JSON.stringify(summary)}\n`);
