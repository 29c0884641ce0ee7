/**
 * An HTTP/2 service (TLS, HTTP/1.1 allowed too; cleartext h2c without TLS_KEY)
 * that upgrades itself on SIGHUP without failing a stream: when a generation
 * stops accepting, each of its sessions gets GOAWAY, the streams in flight
 * finish there, and the client opens its next session on the new generation.
 *
 *   TLS_KEY=key.pem TLS_CERT=cert.pem PORT=8443 node --import tsx examples/http2-server.ts
 *   PORT=8080 node --import tsx examples/http2-server.ts        (h2c)
 *   kill -HUP <pid>          # zero-downtime upgrade
 *   kill -TERM <pid>         # graceful stop
 *
 *   GET /              hello, with the generation in x-generation
 *   GET /slow?ms=N     the same after N ms (at most 60 s)
 *
 * Logs one JSON line per lifecycle step on stdout (ready with the port, the drain's result).
 * WORKERS=2 serves from two worker processes (x-worker says which answered).
 */
import { readFileSync } from 'node:fs';
import { createSecureServer, createServer, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { Ecdysis } from 'ecdysis';

const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid, ...(ecdysis.worker ? { worker: ecdysis.worker.index } : {}) })}\n`);

// WORKERS=n (or auto): one primary holding the sockets and n workers serving, each running this file.
const workers = process.env.WORKERS === 'auto' ? 'auto' : process.env.WORKERS ? Number(process.env.WORKERS) : undefined;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'], pidFile: process.env.PID_FILE, ...(workers ? { workers } : {}) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type }));

const handler = (req: Http2ServerRequest, res: Http2ServerResponse) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const delay = url.pathname === '/slow' ? Math.min(Number(url.searchParams.get('ms') ?? 100), 60_000) : 0;
  const timer = setTimeout(() => {
    res.setHeader('x-generation', String(ecdysis.generation));
    if (ecdysis.worker) res.setHeader('x-worker', String(ecdysis.worker.index));
    res.end(`hello from generation ${ecdysis.generation} over HTTP/${req.httpVersion}\n`);
  }, delay);
  res.on('close', () => clearTimeout(timer)); // a cut stream must not keep the process alive
};
const server = process.env.TLS_KEY
  ? createSecureServer({ key: readFileSync(process.env.TLS_KEY), cert: readFileSync(process.env.TLS_CERT ?? ''), allowHTTP1: true }, handler)
  : createServer(handler);

const web = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 8443) });
web.serve(server); // sessions tracked: GOAWAY when this generation stops accepting

await ecdysis.ready();
log({ type: 'ready', role: ecdysis.role, port: web.port });
await ecdysis.exit;
const result = await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
log({ type: 'drained', result });
