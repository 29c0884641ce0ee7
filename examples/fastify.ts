/**
 * Fastify on ecdysis: build the app, wait for its plugins, then serve
 * `app.server` on an ecdysis listener instead of calling app.listen().
 *
 *   node --import tsx examples/fastify.ts            then: kill -HUP <pid>
 */
import Fastify from 'fastify';
import { Ecdysis } from 'ecdysis';
import { logLifecycle } from './lib/lifecycle-log.ts';

const ecdysis = await Ecdysis.create({ pidFile: process.env.PID_FILE });
logLifecycle(ecdysis, 'fastify');

const app = Fastify();
app.get('/', async (_request, reply) => {
  reply.header('x-generation', String(ecdysis.generation));
  return { generation: ecdysis.generation, pid: process.pid };
});
await app.ready();

const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 8082) });
web.serve(app.server);

await ecdysis.ready();
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });
await app.close(); // runs Fastify's onClose hooks (database pools and the like)
