/**
 * Holds `count` open HTTP keep-alive connections to a service, each having
 * made one request, so that an upgrade has that many connections to drain.
 * Its own process: 10,000 sockets are 10,000 fds. When the server closes a
 * connection, this side closes too.
 *
 *   node --import tsx idle-connections-process.ts '{"port":8080,"count":1000,"concurrency":200}'
 *
 * Prints one JSON line once every connection is open (or failed), and another
 * when told "stop" on stdin, then closes what is left and exits.
 */
import { connect, type Socket } from 'node:net';
import type { IdleConnectionsOptions } from './idle-connections.ts';

const options = JSON.parse(process.argv[2] ?? '{}') as IdleConnectionsOptions;
const request = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
const sockets = new Set<Socket>();
let opened = 0;
let errors = 0;
let closedByServer = 0;

function open(): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: options.port });
    let answered = false;
    socket.setTimeout(10_000, () => socket.destroy(new Error('timeout')));
    socket.on('connect', () => socket.write(request));
    socket.once('data', () => {
      answered = true;
      opened++;
      sockets.add(socket);
      socket.setTimeout(0);
      resolve();
    });
    socket.on('end', () => {
      if (answered) closedByServer++;
    });
    socket.on('error', () => {
      if (!answered) errors++;
    });
    socket.on('close', () => {
      sockets.delete(socket);
      resolve();
    });
  });
}

let next = 0;
async function opener(): Promise<void> {
  while (next < options.count) {
    next++;
    await open();
  }
}
await Promise.all(Array.from({ length: Math.min(options.concurrency, options.count) }, opener));
process.stdout.write(`${JSON.stringify({ opened, errors })}\n`);

process.stdin.setEncoding('utf8').on('data', (chunk: string) => {
  if (!chunk.includes('stop')) return;
  process.stdout.write(`${JSON.stringify({ closedByServer, stillOpen: sockets.size })}\n`);
  for (const socket of sockets) socket.destroy();
  process.exit(0);
});
