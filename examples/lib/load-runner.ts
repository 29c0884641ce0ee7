/** Start examples/lib/load-process.ts as a separate process and collect its report. */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadOptions, LoadReport } from './http-load.ts';
import type { WsLoadOptions } from './ws-load.ts';
import type { GrpcLoadOptions } from './grpc-load.ts';
import type { Http2LoadOptions } from './http2-load.ts';

const script = fileURLToPath(new URL('./load-process.ts', import.meta.url));

export interface LoadProcess {
  pid: number;
  /** Resolves once the clients are running. */
  started: Promise<void>;
  /** Stop the clients and get the report. */
  stop(): Promise<LoadReport>;
  /** Kill it (cleanup on failure paths). */
  kill(): void;
}

export function startLoadProcess(options: LoadOptions | (Http2LoadOptions & { protocol: 'http2' }) | (WsLoadOptions & { protocol: 'ws' }) | (GrpcLoadOptions & { protocol: 'grpc' })): LoadProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', script, JSON.stringify(options)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  let markStarted: () => void;
  const started = new Promise<void>((resolve) => (markStarted = resolve));
  const report = new Promise<LoadReport>((resolve, reject) => {
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      out += chunk;
      if (out.startsWith('started\n')) markStarted();
    });
    child.on('close', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as LoadReport);
      else reject(new Error(`load process exited with ${code} and no report`));
    });
  });
  report.catch(() => {});
  return {
    pid: child.pid!,
    started,
    stop: () => {
      child.stdin.end('stop\n');
      return report;
    },
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}
