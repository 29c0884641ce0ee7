/**
 * Runs HttpLoad (or Http2Load with "protocol": "http2", WsLoad with "ws", GrpcLoad with "grpc") in its
 * own process, so the load never shares an event loop with the server or the
 * process driving upgrades.
 *
 *   node --import tsx examples/lib/load-process.ts '<LoadOptions as JSON>'
 *
 * Writes "started" on stdout once running; on a line "stop" on stdin (or at its
 * durationMs bound) it stops and writes the LoadReport as one JSON line.
 */
import { HttpLoad, type LoadOptions } from './http-load.ts';
import { Http2Load, type Http2LoadOptions } from './http2-load.ts';
import type { WsLoadOptions } from './ws-load.ts';
import type { GrpcLoadOptions } from './grpc-load.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as
  | (LoadOptions & { protocol?: 'http1' })
  | (Http2LoadOptions & { protocol: 'http2' })
  | (WsLoadOptions & { protocol: 'ws' })
  | (GrpcLoadOptions & { protocol: 'grpc' });
// ws and @grpc/grpc-js are loaded only for their loads (dev dependencies of the examples).
const load =
  options.protocol === 'grpc' ? new (await import('./grpc-load.ts')).GrpcLoad(options).start() :
  options.protocol === 'ws' ? new (await import('./ws-load.ts')).WsLoad(options).start() :
  options.protocol === 'http2' ? new Http2Load(options).start() :
  new HttpLoad(options).start();
process.stdout.write('started\n');

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  clearTimeout(bound);
  const report = await load.stop();
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.stdin.destroy();
}
const bound = setTimeout(stop, (options.durationMs ?? 120_000) + 1_000);
process.stdin.setEncoding('utf8').on('data', (chunk: string) => {
  if (chunk.includes('stop')) void stop();
});
process.stdin.on('end', () => void stop());
