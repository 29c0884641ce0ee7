/**
 * A TCP proxy built reactively: the front socket survives upgrades, each
 * accepted connection is relayed to a new upstream connection, bytes counted
 * both ways. Connections in flight at an upgrade stay with the old generation
 * until they end (or its drain deadline); new ones reach the new generation.
 *
 *   UPSTREAM=127.0.0.1:6379 PORT=6380 node --import tsx examples/tcp-proxy.ts
 *   kill -HUP <pid>      # upgrade: nobody is refused, no relay is cut
 *
 * Logs one JSON line per lifecycle step on stdout.
 */
import { connect, type Socket } from 'node:net';
import { Observable, mergeMap } from 'rxjs';
import { Ecdysis } from 'ecdysis';

const [upstreamHost, upstreamPort] = (process.env.UPSTREAM ?? '127.0.0.1:6379').split(':') as [string, string];
const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid })}\n`);

const ecdysis = await Ecdysis.create({ probation: Number(process.env.PROBATION ?? 5_000) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type, ...('error' in event ? { code: event.error.code } : {}) }));
const front = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 6380) });

const totals = { connections: 0, up: 0, down: 0 };
let active = 0;
front
  .connections()
  .pipe(mergeMap((client) => relay(client)))
  .subscribe(({ up, down }) => {
    totals.connections++;
    totals.up += up;
    totals.down += down;
  });

await ecdysis.ready();
log({ type: 'ready', port: front.port });
const { mode } = await ecdysis.exit;
log({ type: 'exiting', mode });
const result = await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
// drain() waits for the client sides; their upstream sides close right after.
while (active > 0) await new Promise((r) => setTimeout(r, 10));
log({ type: 'drained', result, totals });

/** One relay: completes with its byte counts once both sides have closed; unsubscribing cuts it. */
function relay(client: Socket): Observable<{ up: number; down: number }> {
  return new Observable((subscriber) => {
    active++;
    const upstream = connect(Number(upstreamPort), upstreamHost);
    let up = 0;
    let down = 0;
    let closed = 0;
    client.on('data', (chunk: Buffer) => (up += chunk.length));
    upstream.on('data', (chunk: Buffer) => (down += chunk.length));
    client.pipe(upstream);
    upstream.pipe(client);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', cut);
    upstream.on('error', cut);
    const closedOne = () => {
      if (++closed < 2) return;
      active--;
      subscriber.next({ up, down });
      subscriber.complete();
    };
    // One side gone for good (an error, or the drain deadline): nothing more can flow.
    client.on('close', () => upstream.end(() => upstream.destroy()));
    upstream.on('close', () => client.end(() => client.destroy()));
    client.on('close', closedOne);
    upstream.on('close', closedOne);
    return cut;
  });
}
