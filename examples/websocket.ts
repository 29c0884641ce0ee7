/**
 * A WebSocket service (the `ws` package) that upgrades itself on SIGHUP
 * without losing a message. Each client numbers its messages; the service
 * handles them one at a time per connection and acknowledges each. When this
 * generation stops accepting (`ecdysis.signal`), every connection is closed
 * with 1001 (going away) once the message it is handling is done; a message
 * that arrives after that is not handled (nor acknowledged), so the client
 * sends it again on its next connection, which reaches the new generation.
 *
 *   PORT=8080 node --import tsx examples/websocket.ts
 *   kill -HUP <pid>          # zero-downtime upgrade
 *   kill -TERM <pid>         # graceful stop
 *
 * Protocol: the client sends {"seq":N,"text":"..."}; the service answers
 * {"ack":N,"gen":G}. A client reconnects on 1001 and sends again what was not
 * acknowledged (examples/lib/ws-load.ts is such a client).
 * Logs one JSON line per lifecycle step on stdout (ready with the port, the drain's result).
 * WORKERS=2 serves from two worker processes (each acknowledgement names the one: `worker`).
 */
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocketServer, type WebSocket } from 'ws';
import { Ecdysis } from 'ecdysis';

const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid, ...(ecdysis.worker ? { worker: ecdysis.worker.index } : {}) })}\n`);

// WORKERS=n (or auto): one primary holding the sockets and n workers serving, each running this file.
const workers = process.env.WORKERS === 'auto' ? 'auto' : process.env.WORKERS ? Number(process.env.WORKERS) : undefined;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'], pidFile: process.env.PID_FILE, ...(workers ? { workers } : {}) });
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type }));

const server = createServer((_req, res) => res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket only\n'));
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws)));

/** The connections of this generation, each with the end of its chain of messages. */
const connections = new Map<WebSocket, { busy: Promise<void>; goingAway: boolean }>();
const totals = { connections: 0, handled: 0, ignored: 0 };

wss.on('connection', (ws: WebSocket) => {
  const state = { busy: Promise.resolve(), goingAway: false };
  connections.set(ws, state);
  totals.connections++;
  ws.on('close', () => connections.delete(ws));
  ws.on('error', () => {}); // a peer that vanishes: 'close' follows
  // Accepted just as this generation stopped accepting: it goes away at once.
  if (ecdysis.signal.aborted) goAway(ws);
  ws.on('message', (data) => {
    if (state.goingAway) {
      totals.ignored++; // not handled, not acknowledged: the client sends it again
      return;
    }
    // One message at a time per connection, in order.
    state.busy = state.busy
      .then(async () => {
        const { seq } = JSON.parse(data.toString()) as { seq: number };
        await sleep(Math.floor(Math.random() * 5)); // the application's work
        totals.handled++;
        ws.send(JSON.stringify({ ack: seq, gen: ecdysis.generation, ...(ecdysis.worker ? { worker: ecdysis.worker.index } : {}) }));
      })
      .catch(() => ws.close(1007, 'not a message of this protocol'));
  });
});

/** Close with 1001 once the message being handled is done; later ones are left for the next generation. */
function goAway(ws: WebSocket): void {
  const state = connections.get(ws);
  if (!state || state.goingAway) return;
  state.goingAway = true;
  void state.busy.then(() => ws.close(1001, 'going away'));
}

ecdysis.signal.addEventListener('abort', () => {
  for (const ws of connections.keys()) goAway(ws);
});

const web = await ecdysis.listenTcp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 8080) });
web.serve(server);

await ecdysis.ready();
log({ type: 'ready', role: ecdysis.role, port: web.port });
await ecdysis.exit;
// A client that never answers the close is cut at the drain deadline.
const result = await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT ?? 30_000) });
log({ type: 'drained', result, totals });
