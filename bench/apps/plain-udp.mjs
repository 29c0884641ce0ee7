/**
 * The same UDP echo without ecdysis, as Node users write it: a dgram socket
 * bound to 127.0.0.1 on PORT (default 0; the port goes into the `serving`
 * record) that sends every datagram's payload back to its sender. The
 * baseline of the datagrams comparison. SIGTERM/SIGINT close it.
 */
import { createSocket } from 'node:dgram';
import { record } from './lifecycle.mjs';

const socket = createSocket('udp4');
socket.on('message', (data, from) => socket.send(data, from.port, from.address));
socket.bind({ address: '127.0.0.1', port: Number(process.env.PORT ?? 0) }, () => record('serving', { port: socket.address().port }));

function stop() {
  socket.close(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
