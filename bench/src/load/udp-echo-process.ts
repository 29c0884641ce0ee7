/**
 * UDP echo load: `clients` dgram sockets, each connected to the server from a
 * port of its own, keep `window` requests outstanding (a request id in the
 * first 4 bytes; the server sends the payload back). Each answer frees its
 * slot for the next request, so the rate follows what the server keeps up
 * with instead of overflowing its receive buffer. A request unanswered after
 * `lossTimeoutMs` counts as lost and its slot is reused; an answer after that
 * counts as late.
 *
 *   node --import tsx udp-echo-process.ts '{"port":5353,"clients":4,"window":16,"size":64,"durationMs":2000,"lossTimeoutMs":500}'
 */
import { createSocket, type Socket } from 'node:dgram';
import { once } from 'node:events';
import type { UdpEchoOptions, UdpEchoResult } from './datagram-echo.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as UdpEchoOptions;
const HOST = '127.0.0.1';
let sent = 0;
let answered = 0;
let answeredInWindow = 0;
let lost = 0;
let late = 0;
let invalid = 0;
let errors = 0;
let sending = true;

interface Client {
  socket: Socket;
  /** Request id -> send time (performance.now()); insertion order is age order. */
  outstanding: Map<number, number>;
  nextId: number;
}

function send(client: Client): void {
  const id = client.nextId++;
  const request = Buffer.alloc(options.size);
  request.writeUInt32LE(id, 0);
  client.outstanding.set(id, performance.now());
  sent++;
  client.socket.send(request);
}

async function open(): Promise<Client> {
  const socket = createSocket('udp4');
  socket.bind({ address: HOST, port: 0 });
  await once(socket, 'listening');
  socket.connect(options.port, HOST);
  await once(socket, 'connect');
  const client: Client = { socket, outstanding: new Map(), nextId: 0 };
  socket.on('error', () => errors++);
  socket.on('message', (answer: Buffer) => {
    if (answer.length !== options.size) return void invalid++;
    const id = answer.readUInt32LE(0);
    if (client.outstanding.delete(id)) {
      answered++;
      if (sending) {
        answeredInWindow++;
        send(client);
      }
    } else if (id < client.nextId) late++;
    else invalid++;
  });
  return client;
}

const clients = await Promise.all(Array.from({ length: options.clients }, open));

// Losses: expire the oldest requests of each client, reusing their slots while sending.
const sweep = setInterval(() => {
  const expired = performance.now() - options.lossTimeoutMs;
  for (const client of clients) {
    for (const [id, sentAt] of client.outstanding) {
      if (sentAt > expired) break;
      client.outstanding.delete(id);
      lost++;
      if (sending) send(client);
    }
  }
}, Math.max(10, options.lossTimeoutMs / 5));

const started = performance.now();
const cpuAtStart = process.cpuUsage();
for (const client of clients) for (let i = 0; i < options.window; i++) send(client);
await new Promise((resolve) => setTimeout(resolve, options.durationMs));
sending = false;
const elapsedMs = performance.now() - started;
const cpu = process.cpuUsage(cpuAtStart);
// The last answers: every outstanding request is answered or expires within lossTimeoutMs.
const settleBy = performance.now() + options.lossTimeoutMs * 2 + 1_000;
while (clients.some((c) => c.outstanding.size > 0) && performance.now() < settleBy) await new Promise((resolve) => setTimeout(resolve, 5));
clearInterval(sweep);
for (const client of clients) {
  lost += client.outstanding.size;
  client.socket.close();
}

const summary: UdpEchoResult = {
  sent,
  answered,
  answeredInWindow,
  lost,
  late,
  invalid,
  errors,
  elapsedMs,
  perSecond: (answeredInWindow / elapsedMs) * 1000,
  clientCpu: (cpu.user + cpu.system) / 1000 / elapsedMs,
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
