/**
 * serve() and drain() in one process (generation 0): HTTPS connections are
 * tracked like HTTP ones; one server served by several listeners.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ecdysis } from '../../src/index.ts';

const quiet = { upgradeOn: [], stopOn: [] };

function selfSignedCertificate(): { key: Buffer; cert: Buffer } {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-tls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-subj', '/CN=localhost', '-days', '1'], { stdio: 'ignore' });
  return { key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
}

test('HTTPS: an in-flight request finishes with Connection: close and counts as completed, not idle', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const server = createHttpsServer(selfSignedCertificate(), (_req, res) => setTimeout(() => res.end('done'), 600));
  web.serve(server);
  await ecdysis.ready();
  const response = new Promise<{ status: number; connection: string | undefined; body: string }>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: web.port, rejectUnauthorized: false }, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, connection: res.headers.connection, body }));
    });
    req.on('error', reject);
    req.end();
  });
  await new Promise((r) => setTimeout(r, 200));
  ecdysis.stop();
  const result = await ecdysis.drain({ timeout: 5_000, idleTimeout: 0 });
  t.deepEqual(await response, { status: 200, connection: 'close', body: 'done' });
  t.like(result, { connections: 1, completed: 1, closedIdle: 0, destroyed: 0 });
});

test('one HTTP server served by two listeners: only the stopping listener\'s connections are told to close', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const admin = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0, stopOnShutdown: false });
  const server = createHttpServer((_req, res) => setTimeout(() => res.end('ok'), 300));
  const detachWeb = web.serve(server);
  admin.serve(server);
  t.is(server.listenerCount('request'), 2, 'one tracker for the server, whatever the number of listeners');
  await ecdysis.ready();
  const ask = (port: number) =>
    new Promise<string | undefined>((resolve, reject) =>
      httpGet({ host: '127.0.0.1', port, agent: false, headers: { connection: 'keep-alive' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.headers.connection));
      }).on('error', reject),
    );
  const viaWeb = ask(web.port);
  const viaAdmin = ask(admin.port);
  await new Promise((r) => setTimeout(r, 100));
  ecdysis.stop();
  t.is(await viaWeb, 'close');
  t.is(await viaAdmin, 'keep-alive');
  detachWeb();
  detachWeb();
  t.is(server.listenerCount('request'), 2, 'still tracked for the other listener');
  await ecdysis.drain({ timeout: 1_000 });
});

test('drain accounting: a connection already ending after its last response counts as completed, not as closed idle', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  // The application ends the connection after its last response (as Node does
  // after `Connection: close`): from then on it is ending by itself.
  web.serve(createHttpServer((req, res) => res.end('bye', () => req.socket.end())));
  await ecdysis.ready();
  // A client that reads the response and the server's FIN but ends its own side
  // only later: the server's socket has ended writing, and is not closed yet.
  const client = connect({ host: '127.0.0.1', port: web.port, allowHalfOpen: true });
  t.teardown(() => client.destroy());
  let response = '';
  client.on('data', (chunk: Buffer) => (response += chunk));
  const serverEnded = new Promise((resolve) => client.once('end', resolve));
  client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await serverEnded;
  t.regex(response, /bye$/);
  ecdysis.stop();
  const drained = ecdysis.drain({ timeout: 10_000, idleTimeout: 0 });
  await ecdysis.exit;
  // The drain has swept at least once by now; only then does the client end.
  await new Promise((r) => setTimeout(r, 300));
  client.end();
  t.like(await drained, { connections: 1, completed: 1, closedIdle: 0, destroyed: 0 });
});

test('the mistake of also calling server.listen() on a served server: ERR_ECDYSIS_SERVED at the call, saying why; detached, listen() works again', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const server = createHttpServer((_req, res) => res.end('ok'));
  const detach = web.serve(server);
  const error = t.throws(() => server.listen(web.port, '127.0.0.1'), { code: 'ERR_ECDYSIS_SERVED' });
  t.regex(error!.message, /do not call server\.listen\(\) too/);
  t.false(server.listening);
  detach();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.true(server.listening);
  await new Promise((resolve) => server.close(resolve));
});
