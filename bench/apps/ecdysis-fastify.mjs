/**
 * examples/fastify.ts as plain JavaScript (no TypeScript loader in the
 * measurement): Fastify on ecdysis. COMPILE_CACHE=1 turns on the
 * `compileCache` option (Node 22.1+).
 */
import Fastify from 'fastify';
import { Ecdysis } from '../../dist/index.js';
import { record, recordEvents } from './lifecycle.mjs';

const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'], ...(process.env.COMPILE_CACHE ? { compileCache: process.env.COMPILE_CACHE } : {}) });
recordEvents(ecdysis);
const app = Fastify();
app.get('/', async () => ({ generation: ecdysis.generation, pid: process.pid }));
await app.ready();
const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) });
web.serve(app.server);
await ecdysis.ready();
record('serving', { generation: ecdysis.generation });
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });
await app.close();
