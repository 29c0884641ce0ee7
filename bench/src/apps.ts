/**
 * The services under benchmark (bench/apps/*.mjs, plain JavaScript so that pm2
 * cluster mode can run them and so that no TypeScript loader skews start-up),
 * and how the driver starts one.
 */
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { pinned, spawnTracked } from './lib/children.ts';
import type { LifecycleLog } from './lib/lifecycle-log.ts';

const app = (name: string) => fileURLToPath(new URL(`../apps/${name}`, import.meta.url));

export const APPS = {
  /** node:http with a graceful stop; also the worker of the supervisor. */
  plain: app('plain-http.mjs'),
  /** The same handler behind ecdysis. */
  ecdysis: app('ecdysis-http.mjs'),
  /** The ecdysis service with a large in-memory state handed to each next generation (STATE_KIND, STATE_MB). */
  ecdysisState: app('ecdysis-state.mjs'),
  /** An HTTP/2 (h2c) service: GOAWAY to every session on SIGTERM, exit once they closed. */
  plainHttp2: app('plain-http2.mjs'),
  /** The same HTTP/2 service behind ecdysis (listener.serve()). */
  ecdysisHttp2: app('ecdysis-http2.mjs'),
  /** examples/fastify.ts as plain JavaScript (COMPILE_CACHE: the compileCache option). */
  ecdysisFastify: app('ecdysis-fastify.mjs'),
  /** Holds the listening socket and restarts plain-http.mjs workers on SIGHUP. */
  supervisor: app('supervisor.mjs'),
  /** UDP echo through ecdysis (CONSUME=iterator|observable). */
  ecdysisUdp: app('ecdysis-udp.mjs'),
  /** UDP echo on a plain dgram socket. */
  plainUdp: app('plain-udp.mjs'),
  /** Unix seqpacket echo through ecdysis. */
  ecdysisSeqpacket: app('ecdysis-seqpacket.mjs'),
  /** Framed echo on a plain node:net Unix stream server. */
  plainUnixStream: app('plain-unix-stream.mjs'),
} as const;

export interface LaunchOptions {
  script: string;
  log: LifecycleLog;
  env?: Record<string, string>;
  /** Pin to this CPU (taskset), when the machine has taskset. */
  cpu?: number;
  /** Extra stdio slots from fd 3 on (the supervisor's listening socket, as an fd number). */
  extraStdio?: number[];
}

/** Start one app process; its lifecycle records go to `log`. */
export function launchApp(options: LaunchOptions): ChildProcess {
  const [command, args] = pinned(options.cpu, process.execPath, [options.script]);
  return spawnTracked(command, args, {
    stdio: ['ignore', 'ignore', 'inherit', ...(options.extraStdio ?? [])],
    env: { ...process.env, ...options.env, BENCH_LOG: options.log.file },
  });
}
