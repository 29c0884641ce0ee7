/**
 * The same service with ecdysis: SIGHUP upgrades, SIGTERM/SIGINT stop.
 *
 * ACCEPT picks how connections reach the http.Server (the steady-state
 * comparison): 'serve' (default) = listener.serve(server); 'iterator' =
 * for await (const socket of listener); 'observable' = listener.connections().
 * LISTENERS opens that many TCP listeners in all (the first on PORT, the rest on
 * port 0), each with its own http.Server, as node:http has one server per
 * listening socket. KEEP_ALIVE_MS sets the server's
 * keepAliveTimeout; DRAIN_IDLE_MS the drain's idleTimeout (default: the
 * keepAliveTimeout, as the library does).
 */
import { createServer } from 'node:http';
import { Ecdysis } from '../../dist/index.js';
import { handle } from './handler.mjs';
import { record, recordEvents } from './lifecycle.mjs';

const env = process.env;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
recordEvents(ecdysis);

const accept = {
  serve: (listener, server) => listener.serve(server),
  iterator: async (listener, server) => {
    for await (const socket of listener) server.emit('connection', socket);
  },
  observable: (listener, server) => listener.connections().subscribe((socket) => server.emit('connection', socket)),
}[env.ACCEPT ?? 'serve'];
if (!accept) throw new Error(`unknown ACCEPT=${env.ACCEPT}`);

const listeners = Number(env.LISTENERS ?? 1);
for (let i = 0; i < listeners; i++) {
  const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port: i === 0 ? Number(env.PORT ?? 0) : 0 });
  const server = createServer(handle);
  if (env.KEEP_ALIVE_MS) server.keepAliveTimeout = Number(env.KEEP_ALIVE_MS);
  void accept(listener, server);
}

await ecdysis.ready();
record('serving', { generation: ecdysis.generation });
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000, ...(env.DRAIN_IDLE_MS ? { idleTimeout: Number(env.DRAIN_IDLE_MS) } : {}) });
