/**
 * The probe listener (option `probes`): a small HTTP server for load balancers,
 * Kubernetes and Prometheus, on a socket handed over to every generation like
 * any other listener and answered by the generation that serves:
 *
 *   GET /livez    200 while the application's checks pass (and the event loop
 *                 answers at all), else 503
 *   GET /readyz   200 while the service is ready (this generation serves and is
 *                 not in a stop's lame-duck delay, or it handed over in an
 *                 upgrade and drains) and the checks pass, else 503
 *   GET /metrics  the Prometheus text format
 *
 * Every answer is JSON (metrics aside) and never cached. Hostile or broken
 * clients are bounded: 4 KiB of headers, 5 s to send a request, 10 s idle, 64
 * connections at once; nothing else is read.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { PROMETHEUS_CONTENT_TYPE } from '../internal/prometheus.ts';
import { tcpRequest } from '../kinds/tcp.ts';
import { unixStreamRequest } from '../kinds/unix.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import type { StreamListener } from '../listeners/stream-listener.ts';
import type { ProbesConfig } from './probes-config.ts';

/** What a probe asks of the generation. */
export interface ProbeHandler {
  health(): Promise<Health>;
  /** The metrics, in the Prometheus text format. */
  metrics(): string;
}

/** What /livez and /readyz (and `ecdysis.health()`) answer. */
export interface Health {
  /** The application's checks pass (and this process answers). */
  live: boolean;
  /** `live`, and the service is ready: this generation serves and is not stopping, or its successor serves. */
  ready: boolean;
  state: string;
  generation: number;
  pid: number;
  /** Each registered check's last result. */
  checks: Record<string, boolean>;
}

/** The key prefix of the probe listener (not one of the application's listeners). */
export const PROBES_KEY_PREFIX = 'probes:';
const MAX_CONNECTIONS = 64;
const MAX_HEADER_BYTES = 4096;
const REQUEST_TIMEOUT_MS = 5_000;
const IDLE_TIMEOUT_MS = 10_000;

export async function probesRequest(config: ProbesConfig, handler: ProbeHandler): Promise<ListenRequest<StreamListener>> {
  const base: ListenRequest<StreamListener> =
    config.kind === 'tcp' ? await tcpRequest({ host: config.host, port: config.port }) : await unixStreamRequest(config.path, config.mode === undefined ? {} : { mode: config.mode });
  return {
    ...base,
    key: `${PROBES_KEY_PREFIX}${base.key}`,
    listener(socket) {
      const listener = base.listener(socket);
      listener.serve(probeServer(handler));
      return listener;
    },
  };
}

function probeServer(handler: ProbeHandler): Server {
  const server = createServer(
    { maxHeaderSize: MAX_HEADER_BYTES, requestTimeout: REQUEST_TIMEOUT_MS, headersTimeout: REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 1_000 },
    (request, response) => void answer(request, response, handler),
  );
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  let open = 0;
  server.on('connection', (socket) => {
    open++;
    socket.once('close', () => open--);
    if (open > MAX_CONNECTIONS) return void socket.destroy();
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
  });
  return server;
}

async function answer(request: IncomingMessage, response: ServerResponse, handler: ProbeHandler): Promise<void> {
  // Nothing a probe sends is read beyond its headers.
  request.resume();
  response.setHeader('cache-control', 'no-store');
  if (request.method !== 'GET' && request.method !== 'HEAD') return reply(response, 405, { error: 'only GET and HEAD' });
  const path = (request.url ?? '/').split('?')[0];
  try {
    if (path === '/metrics') {
      response.setHeader('content-type', PROMETHEUS_CONTENT_TYPE);
      response.end(request.method === 'HEAD' ? undefined : handler.metrics());
      return;
    }
    if (path !== '/livez' && path !== '/readyz') return reply(response, 404, { error: 'GET /livez, /readyz or /metrics' });
    const health = await handler.health();
    const ok = path === '/livez' ? health.live : health.ready;
    reply(response, ok ? 200 : 503, { status: ok ? 'ok' : 'unavailable', ...health });
  } catch (err) {
    reply(response, 500, { error: (err as Error).message });
  }
}

function reply(response: ServerResponse, status: number, body: Record<string, unknown>): void {
  if (response.headersSent || response.destroyed) return;
  response.statusCode = status;
  response.setHeader('content-type', 'application/json');
  response.end(`${JSON.stringify(body)}\n`);
}
