/**
 * A gRPC service (@grpc/grpc-js) that upgrades itself on SIGHUP without failing
 * a call: the server is attached to the inherited listener with serveGrpc()
 * (never bindAsync), and when a generation stops accepting, its HTTP/2 sessions
 * get GOAWAY, the calls in flight (server streams included) finish there, and
 * the clients' next calls reach the new generation.
 *
 *   PORT=50051 node --import tsx examples/grpc-server.ts
 *   kill -HUP <pid>          # zero-downtime upgrade
 *   kill -TERM <pid>         # graceful stop
 *
 * The service is examples/grpc/echo.proto. Logs one JSON line per lifecycle
 * step on stdout (ready with the port, the drain's result). WORKERS=2 serves from
 * two worker processes (each reply names the one that answered).
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { Ecdysis } from 'ecdysis';

interface EchoRequest {
  text: string;
  count: number;
  interval_ms: number;
}

const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid, ...(ecdysis.worker ? { worker: ecdysis.worker.index } : {}) })}\n`);

// WORKERS=n (or auto): one primary holding the sockets and n workers serving, each running this file.
const workers = process.env.WORKERS === 'auto' ? 'auto' : process.env.WORKERS ? Number(process.env.WORKERS) : undefined;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'], pidFile: process.env.PID_FILE, ...(workers ? { workers } : {}) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type }));

const proto = grpc.loadPackageDefinition(loadSync(fileURLToPath(new URL('./grpc/echo.proto', import.meta.url)))) as unknown as {
  echo: { Echo: { service: grpc.ServiceDefinition } };
};
/** With WORKERS: which worker answers (its index), else empty. */
const answeredBy = ecdysis.worker ? String(ecdysis.worker.index) : '';
const server = new grpc.Server();
server.addService(proto.echo.Echo.service, {
  Unary(call: grpc.ServerUnaryCall<EchoRequest, unknown>, callback: grpc.sendUnaryData<unknown>) {
    callback(null, { text: call.request.text, generation: ecdysis.generation, index: 0, worker: answeredBy });
  },
  Stream(call: grpc.ServerWritableStream<EchoRequest, unknown>) {
    const { text, count, interval_ms: interval } = call.request;
    let index = 0;
    const timer = setInterval(() => {
      call.write({ text, generation: ecdysis.generation, index, worker: answeredBy });
      if (++index >= count) {
        clearInterval(timer);
        call.end();
      }
    }, Math.min(interval, 10_000));
    call.on('cancelled', () => clearInterval(timer));
  },
});

const web = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 50051) });
web.serveGrpc(server, grpc.ServerCredentials.createInsecure());

await ecdysis.ready();
log({ type: 'ready', role: ecdysis.role, port: web.port });
await ecdysis.exit;
const result = await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
log({ type: 'drained', result });
