/**
 * The comparison row of the seqpacket echo: a node:net server on a Unix
 * *stream* socket at SOCKET_PATH, with the framing a stream needs to carry
 * messages (a 4-byte big-endian length, then the payload). Each complete frame
 * is written back with one write(), as the seqpacket service sends each
 * message with one send(); reading pauses while the socket's write buffer is
 * full. No ecdysis. SIGTERM/SIGINT close it.
 */
import { createServer } from 'node:net';
import { record } from './lifecycle.mjs';

const HEADER = 4;
const path = process.env.SOCKET_PATH;
if (!path) throw new Error('SOCKET_PATH is required');

const server = createServer((socket) => {
  let buffered = Buffer.alloc(0);
  socket.on('data', (chunk) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    let offset = 0;
    let writable = true;
    while (buffered.length - offset >= HEADER) {
      const end = offset + HEADER + buffered.readUInt32BE(offset);
      if (end > buffered.length) break;
      writable = socket.write(buffered.subarray(offset, end)) && writable;
      offset = end;
    }
    buffered = buffered.subarray(offset);
    if (!writable) {
      socket.pause();
      socket.once('drain', () => socket.resume());
    }
  });
  socket.on('error', () => {});
});
server.listen({ path }, () => record('serving', { path }));

function stop() {
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 5_000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
