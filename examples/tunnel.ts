/**
 * A TCP tunnel whose connections survive upgrades: each client connection is
 * relayed to the upstream, and at an upgrade both sockets of every relay move
 * to the new generation (ecdysis.onHandoff), with whatever was read and not yet
 * forwarded. Clients and the upstream notice nothing: no reconnect, no byte
 * lost or repeated. The relay count survives too (state).
 *
 *   UPSTREAM=127.0.0.1:6379 PORT=6380 node --import tsx examples/tunnel.ts
 *   kill -HUP <pid>
 *
 * Logs one JSON line per lifecycle step on stdout.
 */
import { connect, type Socket } from 'node:net';
import { Ecdysis } from 'ecdysis';

const [upstreamHost, upstreamPort] = (process.env.UPSTREAM ?? '127.0.0.1:6379').split(':') as [string, string];
const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid })}\n`);

interface Relay {
  id: number;
  client: Socket;
  upstream: Socket;
}

const ecdysis = await Ecdysis.create({ probation: Number(process.env.PROBATION ?? 5_000) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type }));
const relays = new Map<number, Relay>();
let opened = 0;

// What the previous generation moved here: its relay count, and both sockets of each relay.
const inherited = await ecdysis.inherited();
if (inherited) {
  // No state when the previous generation moved nothing (an older version without onHandoff).
  opened = (inherited.state as { opened: number } | undefined)?.opened ?? 0;
  for (const [key, { socket, meta }] of inherited.sockets) {
    if (!key.endsWith(':client')) continue;
    const { id } = meta as { id: number };
    relay(id, socket, inherited.sockets.get(`${id}:upstream`)!.socket);
  }
}

ecdysis.onHandoff(async (handoff) => {
  handoff.state({ opened });
  const moving = [...relays.values()];
  // Stop forwarding both ways first (pipe() would resume a paused side), so that
  // nothing is written to a socket after it was taken; what was read and not yet
  // forwarded moves with the socket it was read from.
  for (const { client, upstream } of moving) {
    client.unpipe(upstream);
    upstream.unpipe(client);
    client.pause();
    upstream.pause();
  }
  for (const { id, client, upstream } of moving) {
    await handoff.socket(`${id}:client`, client, { meta: { id } });
    await handoff.socket(`${id}:upstream`, upstream, { meta: { id } });
  }
  // The new generation failed: the relays go on here, where they stopped.
  void handoff.outcome.then((outcome) => {
    if (outcome === 'failed') for (const { client, upstream } of moving) connectBothWays(client, upstream);
  });
});

const front = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 6380) });
void (async () => {
  for await (const client of front) {
    const upstream = connect(Number(upstreamPort), upstreamHost);
    relay(++opened, client, upstream);
  }
})();

await ecdysis.ready();
log({ type: 'ready', port: front.port, relays: relays.size, opened });
await ecdysis.exit;
const result = await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
log({ type: 'drained', result });

function connectBothWays(client: Socket, upstream: Socket): void {
  client.pipe(upstream);
  upstream.pipe(client);
}

function relay(id: number, client: Socket, upstream: Socket): void {
  relays.set(id, { id, client, upstream });
  connectBothWays(client, upstream);
  const close = () => {
    relays.delete(id);
    client.destroy();
    upstream.destroy();
  };
  // A relay moved to the next generation closes here without ending its connections.
  client.on('close', close);
  upstream.on('close', close);
  client.on('error', close);
  upstream.on('error', close);
}
