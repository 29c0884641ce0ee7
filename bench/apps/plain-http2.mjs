/**
 * The HTTP/2 service (h2c) without ecdysis, for the naive restart: on SIGTERM,
 * server.close() (no new sessions) and session.close() on every session (a
 * GOAWAY: streams in flight finish, no new ones), then the process exits once
 * the last session has closed, bounded by STOP_TIMEOUT.
 */
import { createServer } from 'node:http2';
import { handleHttp2 } from './handler.mjs';
import { record, stopGracefullyOnSignal } from './lifecycle.mjs';

const server = createServer(handleHttp2);
const sessions = new Set();
server.on('session', (session) => {
  sessions.add(session);
  session.on('close', () => sessions.delete(session));
});
server.listen({ host: '127.0.0.1', port: Number(process.env.PORT) }, () => record('serving'));

stopGracefullyOnSignal(server, () => {
  for (const session of sessions) session.close();
});
