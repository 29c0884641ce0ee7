/**
 * Message echo load over Unix sockets: `connections` connections to the
 * server at `path`, each keeping `window` messages of `size` bytes in flight
 * (every echo received lets the next message go). Order is kept on both
 * transports, so an echo is matched by count and checked by size.
 *
 * 'seqpacket' talks to the server through the library's addon (Node has no
 * seqpacket sockets): connectUnix() and a 'connected' PacketSocket, one
 * message per packet. 'stream' uses node:net, each message framed as a 4-byte
 * big-endian length and the payload.
 *
 *   node --import tsx message-echo-process.ts '{"path":"/tmp/x/echo.sock","transport":"seqpacket","connections":4,"window":16,"size":64,"durationMs":2000,"settleMs":1000}'
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { native } from '../../../src/internal/native.ts';
import type { MessageEchoOptions, MessageEchoResult } from './datagram-echo.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as MessageEchoOptions;
const HEADER = 4;
let sent = 0;
let echoed = 0;
let echoedInWindow = 0;
let errors = 0;
let sending = true;

interface Connection {
  /** Messages sent and not echoed yet. */
  inFlight: number;
  send(): void;
  close(): void;
}

/** One echo received (of the right size or not): count it, send the next. */
function received(connection: Connection, ok: boolean): void {
  connection.inFlight--;
  if (!ok) return void errors++;
  echoed++;
  if (!sending) return;
  echoedInWindow++;
  connection.send();
}

async function openSeqpacket(): Promise<Connection> {
  const n = native();
  const message = Buffer.alloc(options.size, 1);
  const connection: Connection = {
    inFlight: 0,
    send() {
      connection.inFlight++;
      sent++;
      // false = queued beyond the high-water mark: the window keeps that bounded.
      socket.send(message);
    },
    close: () => socket.close(),
  };
  const socket = new n.PacketSocket(n.connectUnix(options.path, 'seqpacket'), 'connected', {
    onMessage: (data) => received(connection, data.length === options.size),
    onError: () => errors++,
    onEnd: () => {
      if (sending) errors++;
    },
  });
  socket.startReading();
  return connection;
}

async function openStream(): Promise<Connection> {
  const frame = Buffer.alloc(HEADER + options.size, 1);
  frame.writeUInt32BE(options.size, 0);
  const socket = connect({ path: options.path });
  await once(socket, 'connect');
  const connection: Connection = {
    inFlight: 0,
    send() {
      connection.inFlight++;
      sent++;
      socket.write(frame);
    },
    close: () => socket.destroy(),
  };
  let buffered: Buffer = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    let offset = 0;
    while (buffered.length - offset >= HEADER) {
      const length = buffered.readUInt32BE(offset);
      if (buffered.length - offset < HEADER + length) break;
      offset += HEADER + length;
      received(connection, length === options.size);
    }
    buffered = buffered.subarray(offset);
  });
  socket.on('error', () => errors++);
  return connection;
}

const open = options.transport === 'seqpacket' ? openSeqpacket : openStream;
const connections = await Promise.all(Array.from({ length: options.connections }, open));
const started = performance.now();
const cpuAtStart = process.cpuUsage();
for (const connection of connections) for (let i = 0; i < options.window; i++) connection.send();
await new Promise((resolve) => setTimeout(resolve, options.durationMs));
sending = false;
const elapsedMs = performance.now() - started;
const cpu = process.cpuUsage(cpuAtStart);
const settleBy = performance.now() + options.settleMs;
while (connections.some((c) => c.inFlight > 0) && performance.now() < settleBy) await new Promise((resolve) => setTimeout(resolve, 5));
const missing = connections.reduce((n, c) => n + c.inFlight, 0);
for (const connection of connections) connection.close();

const summary: MessageEchoResult = {
  sent,
  echoed,
  echoedInWindow,
  missing,
  errors,
  elapsedMs,
  perSecond: (echoedInWindow / elapsedMs) * 1000,
  clientCpu: (cpu.user + cpu.system) / 1000 / elapsedMs,
};
process.stdout.write(`${JSON.stringify(summary)}\n`);
