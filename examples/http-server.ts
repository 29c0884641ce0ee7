/**
 * A node:http service that upgrades itself on SIGHUP without failing a request.
 *
 *   node --import tsx examples/http-server.ts        (PORT=8080 HOST=127.0.0.1 by default)
 *   kill -HUP <pid>                                  # zero-downtime upgrade
 *   kill -TERM <pid>                                 # graceful stop
 *
 * On macOS and Windows (or with ECDYSIS_LOCAL=1) it runs in local mode: it
 * serves, stops and drains the same, and refuses the upgrade (README).
 *
 * Why not the `tsx` CLI: it runs the script in a child of its own and exits when
 * that child exits, so after the first upgrade it would end generation 0's
 * wrapper and orphan generation 1 from whatever supervises the service.
 * `node --import tsx` re-executes with the same flags (process.execArgv).
 *
 * WORKERS=N: a primary and N worker processes (every core), upgraded as one;
 * responses say which worker answered (x-worker).
 */
import { createServer } from 'node:http';
import { Ecdysis } from 'ecdysis';
import { logLifecycle } from './lib/lifecycle-log.ts';

// CONTROL_SOCKET=/run/app/ctl.sock: `ecdysis upgrade|stop|status --socket` there too.
const control = process.env.CONTROL_SOCKET ? [{ socket: process.env.CONTROL_SOCKET }] : [];
const workers = process.env.WORKERS ? Number(process.env.WORKERS) : undefined;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP', ...control], stopOn: ['SIGTERM', 'SIGINT', ...control], pidFile: process.env.PID_FILE, ...(workers ? { workers } : {}) });
logLifecycle(ecdysis, 'http');

const web = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 8080) });
const server = createServer((req, res) => {
  const delay = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('delay') ?? 0);
  const timer = setTimeout(() => {
    res.setHeader('x-generation', String(ecdysis.generation));
    if (ecdysis.worker) res.setHeader('x-worker', String(ecdysis.worker.index));
    res.end(`hello from generation ${ecdysis.generation}${ecdysis.worker ? `, worker ${ecdysis.worker.index}` : ''} (pid ${process.pid})\n`);
  }, Math.min(delay, 60_000));
  res.on('close', () => clearTimeout(timer)); // a destroyed connection must not keep the process alive
});
web.serve(server);

await ecdysis.ready();
await ecdysis.exit;
await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
