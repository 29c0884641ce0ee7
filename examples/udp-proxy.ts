/**
 * A UDP proxy built reactively: datagrams from each client (address and port)
 * form a session with its own upstream socket; answers from upstream go back to
 * the client from the front socket. The front socket survives upgrades: from the
 * commit on, the new generation reads it, while the old one still relays the
 * answers of its sessions until they go idle.
 *
 *   UPSTREAM=127.0.0.1:53 PORT=5353 node --import tsx examples/udp-proxy.ts
 *   kill -HUP <pid>
 *
 * Logs one JSON line per lifecycle step on stdout.
 */
import { createSocket } from 'node:dgram';
import { Observable, debounceTime, groupBy, mergeMap, type GroupedObservable } from 'rxjs';
import { Ecdysis, type Datagram } from 'ecdysis';

const [upstreamHost, upstreamPort] = (process.env.UPSTREAM ?? '127.0.0.1:53').split(':') as [string, string];
/** A session with no datagram from its client for this long is closed. */
const SESSION_IDLE_MS = Number(process.env.SESSION_IDLE_MS ?? 2_000);
const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid })}\n`);

const ecdysis = await Ecdysis.create({ probation: Number(process.env.PROBATION ?? 5_000) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type }));
const front = await ecdysis.listenUdp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 5353) });

const totals = { sessions: 0, up: 0, down: 0 };
let open = 0;
front
  .messages()
  .pipe(
    groupBy((msg) => `${msg.address}|${msg.port}`, { duration: (session) => session.pipe(debounceTime(SESSION_IDLE_MS)) }),
    mergeMap((session) => relay(session)),
  )
  .subscribe();

await ecdysis.ready();
log({ type: 'ready', port: front.port });
const { mode } = await ecdysis.exit;
log({ type: 'exiting', mode });
// Datagrams have no connection for drain() to wait for: the sessions are ours to finish.
while (open > 0) await new Promise((r) => setTimeout(r, 100));
const result = await ecdysis.drain({ timeout: 1_000 });
log({ type: 'drained', result, totals });

/** One client's session: its datagrams go upstream from one socket, the answers come back to it. */
function relay(session: GroupedObservable<string, Datagram>): Observable<never> {
  return new Observable<never>((subscriber) => {
    open++;
    totals.sessions++;
    const upstream = createSocket(upstreamHost.includes(':') ? 'udp6' : 'udp4');
    let client: Datagram | undefined;
    upstream.on('message', (data) => {
      totals.down += data.length;
      void client?.reply(data).catch(() => {});
    });
    upstream.on('error', () => {});
    // Datagrams that arrive before the upstream socket is connected wait for it.
    let waiting: Buffer[] | undefined = [];
    upstream.connect(Number(upstreamPort), upstreamHost, () => {
      for (const data of waiting!) upstream.send(data);
      waiting = undefined;
    });
    const subscription = session.subscribe({
      next: (msg) => {
        client = msg;
        totals.up += msg.data.length;
        if (waiting) waiting.push(msg.data);
        else upstream.send(msg.data);
      },
      complete: () => subscriber.complete(),
    });
    return () => {
      subscription.unsubscribe();
      // The last answers may still be on their way: give them the idle time.
      setTimeout(() => {
        upstream.close();
        open--;
      }, SESSION_IDLE_MS).unref();
    };
  });
}
