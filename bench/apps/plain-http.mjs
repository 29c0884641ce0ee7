/**
 * The service without ecdysis: node:http on PORT (or on an inherited listening
 * socket on fd 3 when LISTEN_FD=3, for the socket-holding supervisor), with the
 * graceful stop pm2's documentation gives: on SIGTERM or SIGINT (pm2's
 * signal), server.close() (which in Node >= 19 also closes idle keep-alive
 * connections), and process.exit() once the last connection has ended (a
 * cluster worker would not exit by itself: its IPC channel keeps it alive). Used by the naive restart, pm2 and the
 * supervisor, and as the plain baseline of the steady-state measurements and
 * of the drain at scale (KEEP_ALIVE_MS sets the server's keepAliveTimeout).
 */
import { createServer } from 'node:http';
import { handle } from './handler.mjs';
import { record, stopGracefullyOnSignal } from './lifecycle.mjs';

const server = createServer(handle);
if (process.env.KEEP_ALIVE_MS) server.keepAliveTimeout = Number(process.env.KEEP_ALIVE_MS);
const where = process.env.LISTEN_FD ? { fd: Number(process.env.LISTEN_FD) } : { host: '127.0.0.1', port: Number(process.env.PORT) };
server.listen(where, () => {
  // The CPU time its start took (process start → listening), for the start-up comparison.
  const cpu = process.cpuUsage();
  record('serving', { cpuMs: (cpu.user + cpu.system) / 1000 });
  // The supervisor waits for this line before stopping the previous worker.
  process.stdout.write('serving\n');
});

stopGracefullyOnSignal(server);
