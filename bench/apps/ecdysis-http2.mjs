/**
 * The HTTP/2 service (h2c) with ecdysis: listener.serve() tracks its sessions,
 * each gets GOAWAY when this generation stops accepting. SIGHUP upgrades,
 * SIGTERM/SIGINT stop.
 */
import { createServer } from 'node:http2';
import { Ecdysis } from '../../dist/index.js';
import { handleHttp2 } from './handler.mjs';
import { record, recordEvents } from './lifecycle.mjs';

const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
recordEvents(ecdysis);
const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) });
listener.serve(createServer(handleHttp2));
await ecdysis.ready();
record('serving', { generation: ecdysis.generation });
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });
