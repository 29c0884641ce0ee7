/**
 * serve() and drain() in one process (generation 0): HTTPS connections are
 * tracked like HTTP ones; one server served by several listeners.
 */
import test, { type ExecutionContext } from 'ava';
import { createServer as createHttpServer, get as httpGet, type RequestListener } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest } from 'node:https';
import { connect, createServer as createNetServer, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Ecdysis } from '../../src/index.ts';
import { waitUntil } from '../helpers/generations.ts';
import { selfSignedCertificate } from '../helpers/tls.ts';

const quiet = { upgradeOn: [], stopOn: [] };

test('HTTPS: an in-flight request finishes with Connection: close and counts as completed, not idle', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  let arrived!: () => void;
  const requestArrived = new Promise<void>((resolve) => (arrived = resolve));
  const server = createHttpsServer(selfSignedCertificate(), (_req, res) => {
    arrived();
    setTimeout(() => res.end('done'), 600);
  });
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
  await requestArrived; // the request is with the server before the stop (a TLS handshake takes its time on a busy machine)
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
  let arrived = 0;
  const server = createHttpServer((_req, res) => {
    arrived++;
    setTimeout(() => res.end('ok'), 300);
  });
  const detachWeb = web.serve(server);
  admin.serve(server);
  t.is(server.listenerCount('request'), 1, 'nothing of serve() on the way of a request until shutdown');
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
  await waitUntil(() => arrived === 2, 10_000, 'both requests are with the server');
  ecdysis.stop();
  t.is(await viaWeb, 'close');
  t.is(await viaAdmin, 'keep-alive');
  t.is(server.listenerCount('request'), 2, 'one tracker for the server, whatever the number of listeners');
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

for (const secure of [false, true]) {
  test(`HTTP/2${secure ? ' over TLS' : ' cleartext'}: at the stop the session gets GOAWAY, its stream in flight finishes, no new stream starts there, the drain ends without the deadline`, async (t) => {
    const { connect: connectHttp2, createSecureServer, createServer: createHttp2Server } = await import('node:http2');
    const certificate = selfSignedCertificate();
    const ecdysis = await Ecdysis.create(quiet);
    t.teardown(() => ecdysis.stop());
    const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
    let arrived!: () => void;
    let arrivals = 0;
    const streamArrived = new Promise<void>((resolve) => (arrived = resolve));
    const handler = (_req: unknown, res: import('node:http2').Http2ServerResponse) => {
      arrivals++;
      arrived();
      setTimeout(() => res.end('done'), 600);
    };
    const server = secure ? createSecureServer({ key: certificate.key, cert: certificate.cert }, handler) : createHttp2Server(handler);
    web.serve(server);
    await ecdysis.ready();
    const client = connectHttp2(`${secure ? 'https' : 'http'}://127.0.0.1:${web.port}`, secure ? { ca: certificate.cert } : {});
    t.teardown(() => client.destroy());
    client.on('error', () => {});
    const goaway = new Promise<number>((resolve) => client.once('goaway', (code: number) => resolve(code)));
    const response = new Promise<{ status: number; body: string }>((resolve, reject) => {
      const stream = client.request({ ':path': '/' });
      let status = 0;
      let body = '';
      stream.on('response', (headers) => (status = Number(headers[':status'])));
      stream.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
      stream.on('end', () => resolve({ status, body }));
      stream.on('error', reject);
      stream.end();
    });
    await streamArrived; // the stream is with the server before the stop
    ecdysis.stop();
    const drained = ecdysis.drain({ timeout: 10_000 });
    t.is(await goaway, 0, 'GOAWAY with NO_ERROR');
    t.deepEqual(await response, { status: 200, body: 'done' });
    // No new stream on a session that went away: Node 20 and 22 refuse it at the call, Node 24 cancels it before it is sent.
    const late = await new Promise<string | undefined>((resolve) => {
      try {
        const stream = client.request({ ':path': '/' });
        stream.on('error', (err: NodeJS.ErrnoException) => resolve(err.code));
        stream.on('response', () => resolve('answered'));
        stream.end();
      } catch (err) {
        resolve((err as NodeJS.ErrnoException).code);
      }
    });
    t.true(late === 'ERR_HTTP2_GOAWAY_SESSION' || late === 'ERR_HTTP2_STREAM_CANCEL', `a stream after the GOAWAY: ${late}`);
    t.is(arrivals, 1, 'the server saw only the stream from before the stop');
    t.like(await drained, { connections: 1, completed: 1, destroyed: 0, sessions: 1, streams: 1, streamsDestroyed: 0, timedOut: false });
  });
}

test("HTTP/2 with the stream API (as gRPC serves): serving it does not turn on node:http2's compatibility API, which would answer every stream a second time", async (t) => {
  const { connect: connectHttp2, createServer: createHttp2Server } = await import('node:http2');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const server = createHttp2Server();
  const thrown: unknown[] = [];
  server.on('stream', (stream) => {
    // Trailers, as gRPC sends its status: a second responder would send them again and throw.
    stream.respond({ ':status': 200 }, { waitForTrailers: true });
    stream.on('wantTrailers', () => {
      try {
        stream.sendTrailers({ 'x-status': '0' });
      } catch (err) {
        thrown.push(err);
      }
    });
    stream.end('ok');
  });
  web.serve(server);
  t.is(server.listenerCount('request'), 0);
  await ecdysis.ready();
  const client = connectHttp2(`http://127.0.0.1:${web.port}`);
  t.teardown(() => client.destroy());
  const answer = await new Promise<{ body: string; trailers: unknown }>((resolve, reject) => {
    const stream = client.request({ ':path': '/' });
    let body = '';
    let trailers: unknown;
    stream.on('trailers', (headers) => (trailers = headers['x-status']));
    stream.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    stream.on('end', () => resolve({ body, trailers }));
    stream.on('error', reject);
    stream.end();
  });
  t.deepEqual(answer, { body: 'ok', trailers: '0' });
  t.deepEqual(thrown, []);
});

test('HTTP/2: a session whose last stream ends before the client has answered the PING still ends (after a GOAWAY nghttp2 stops reading an idle connection: it hung until the drain deadline)', async (t) => {
  const { connect: connectHttp2, createServer: createHttp2Server } = await import('node:http2');
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  let arrived!: () => void;
  const streamArrived = new Promise<void>((resolve) => (arrived = resolve));
  web.serve(
    createHttp2Server((_req, res) => {
      arrived();
      setTimeout(() => res.end('done'), 300);
    }),
  );
  await ecdysis.ready();
  // A proxy that can hold what the client sends: its answer to the PING among it.
  let holding = false;
  const held: Buffer[] = [];
  let toServer: Socket | undefined;
  const proxy = createNetServer((fromClient) => {
    const upstream = connect(web.port, '127.0.0.1');
    toServer = upstream;
    upstream.pipe(fromClient);
    fromClient.on('data', (chunk: Buffer) => (holding ? held.push(chunk) : upstream.write(chunk)));
    fromClient.on('end', () => upstream.end());
    fromClient.on('error', () => upstream.destroy());
    upstream.on('error', () => fromClient.destroy());
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => proxy.close());
  const client = connectHttp2(`http://127.0.0.1:${(proxy.address() as { port: number }).port}`);
  t.teardown(() => client.destroy());
  client.on('error', () => {});
  const response = new Promise<string>((resolve, reject) => {
    const stream = client.request({ ':path': '/' });
    let body = '';
    stream.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
    stream.on('end', () => resolve(body));
    stream.on('error', reject);
    stream.end();
  });
  await streamArrived;
  holding = true; // from now on the server hears nothing from the client
  ecdysis.stop();
  const drained = ecdysis.drain({ timeout: 5_000 });
  t.is(await response, 'done'); // the stream ended: the session has none open
  // What the client said meanwhile (its PING answer) reaches the server only now.
  holding = false;
  for (const chunk of held.splice(0)) toServer!.write(chunk);
  t.like(await drained, { connections: 1, completed: 1, destroyed: 0, sessions: 1, streamsDestroyed: 0, timedOut: false });
});

test('serveGrpc: anything without createConnectionInjector is ERR_ECDYSIS_INVALID_OPTION at the call', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  for (const server of [{}, null, { createConnectionInjector: 1 }]) {
    t.throws(() => web.serveGrpc(server as never, undefined), { code: 'ERR_ECDYSIS_INVALID_OPTION', message: /createConnectionInjector/ });
  }
});

test('drain of 600 idle keep-alive connections: every one closed idle with a FIN, none reset, none left', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const server = createHttpServer((_req, res) => res.end('ok'));
  server.keepAliveTimeout = 600_000;
  web.serve(server);
  await ecdysis.ready();
  const ends: Promise<string>[] = [];
  const clients: Socket[] = [];
  for (let i = 0; i < 600; i++) {
    const client = connect({ host: '127.0.0.1', port: web.port });
    clients.push(client);
    let text = '';
    const answered = new Promise<void>((resolve) => client.on('data', (chunk: Buffer) => ((text += chunk), text.endsWith('ok') && resolve())));
    ends.push(new Promise((resolve) => {
      client.on('end', () => resolve('end'));
      client.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    }));
    client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await answered;
  }
  t.teardown(() => clients.forEach((c) => c.destroy()));
  ecdysis.stop();
  const drained = await ecdysis.drain({ timeout: 30_000, idleTimeout: 0 });
  t.like(drained, { connections: 600, completed: 0, closedIdle: 600, destroyed: 0, timedOut: false });
  t.deepEqual(new Set(await Promise.all(ends)), new Set(['end']));
});

/**
 * Watches the server's side of the given clients' connections: at every turn of
 * the event loop, how many are destroyed. `firstClosing()` resolves with that
 * count at the first turn that saw any: all of them when the drain closed them in one go.
 */
function watchServerSockets(server: ReturnType<typeof createHttpServer>): { firstClosing(clients: IdleClient[]): Promise<number>; stop(): void } {
  /** The server's side of each connection, by the client's port (read at the accept: a destroyed socket has none). */
  const byPeerPort = new Map<number, Socket>();
  server.on('connection', (socket: Socket) => byPeerPort.set(socket.remotePort!, socket));
  let stopped = false;
  return {
    firstClosing: (clients) =>
      new Promise((resolve) => {
        const sockets = clients.map((c) => byPeerPort.get(c.socket.localPort!)!);
        const tick = () => {
          if (stopped) return;
          const destroyed = sockets.filter((s) => s.destroyed).length;
          if (destroyed > 0) return resolve(destroyed);
          setImmediate(tick);
        };
        setImmediate(tick);
      }),
    stop: () => void (stopped = true),
  };
}

/**
 * Generation 0 serving `handler` over HTTP/1 (keep-alive 600 s), and a second
 * listener kept through the stop if asked, with 2,000 idle keep-alive clients
 * (one request each) whose server sides are watched.
 */
async function withIdleClients(t: ExecutionContext, handler: RequestListener, keptThroughStop = false) {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const kept = keptThroughStop ? await ecdysis.listenTcp({ host: '127.0.0.1', port: 0, stopOnShutdown: false }) : undefined;
  const server = createHttpServer(handler);
  server.keepAliveTimeout = 600_000;
  const watch = watchServerSockets(server);
  t.teardown(() => watch.stop());
  web.serve(server);
  kept?.serve(createHttpServer((_req, res) => res.end('ok')));
  await ecdysis.ready();
  const idle: IdleClient[] = [];
  for (let i = 0; i < 20; i++) idle.push(...(await Promise.all(Array.from({ length: 100 }, () => idleClient(web.port)))));
  t.teardown(() => idle.forEach((c) => c.socket.destroy()));
  return { ecdysis, web, kept, watch, idle };
}

test('drain of 2,000 idle keep-alive connections with nothing in flight: closed in one go, as server.close() does (spreading the closes over turns only delays the end of the drain)', async (t) => {
  const { ecdysis, watch, idle } = await withIdleClients(t, (_req, res) => res.end('ok'));
  const closing = watch.firstClosing(idle);
  ecdysis.stop();
  const drained = ecdysis.drain({ timeout: 30_000, idleTimeout: 0 });
  t.is(await closing, 2_000, 'every idle connection closed in the same turn of the event loop');
  t.like(await drained, { connections: 2_000, completed: 0, closedIdle: 2_000, destroyed: 0, timedOut: false });
  t.deepEqual(new Set(await Promise.all(idle.map((c) => c.ended))), new Set(['end']));
});

test('drain of 2,000 idle keep-alive connections while a listener kept through the stop (stopOnShutdown: false) still serves: the closes are spread over turns, so that its requests keep being served', async (t) => {
  const { ecdysis, kept, watch, idle } = await withIdleClients(t, (_req, res) => res.end('ok'), true);
  const closing = watch.firstClosing(idle);
  ecdysis.stop();
  const drained = ecdysis.drain({ timeout: 30_000, idleTimeout: 0 });
  const firstTurn = await closing;
  t.true(firstTurn < 2_000, `${firstTurn} of the 2,000 idle ones closed in the first turn that closed any`);
  t.true(kept!.accepting);
  t.like(await drained, { connections: 2_000, closedIdle: 2_000, destroyed: 0, timedOut: false });
});

/** A keep-alive client that has made one request; `ended` says how the server closed it ('end': a FIN). */
interface IdleClient {
  socket: Socket;
  /** Everything the server sent. */
  text(): string;
  ended: Promise<string>;
}

function idleClient(port: number, path = '/'): Promise<IdleClient> {
  const socket = connect({ host: '127.0.0.1', port });
  let text = '';
  const ended = new Promise<string>((resolve) => {
    socket.on('end', () => resolve('end'));
    socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
  return new Promise((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      text += chunk;
      if (text.endsWith('ok')) resolve({ socket, text: () => text, ended });
    });
    socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`);
  });
}

test('drain of 2,000 idle keep-alive connections around requests in flight: the request in flight at the stop and one sent during the drain within its idle grace both complete (Connection: close); the rest are closed idle with a FIN once the grace is over', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let holding!: () => void;
  const held = new Promise<void>((resolve) => (holding = resolve));
  const { ecdysis, web, watch, idle } = await withIdleClients(t, (req, res) => {
    if (req.url !== '/hold') return res.end('ok');
    holding();
    void released.then(() => res.end('held ok'));
  });
  // In flight at the stop: answered only once the idle connections are gone.
  const inFlight = connect({ host: '127.0.0.1', port: web.port });
  t.teardown(() => inFlight.destroy());
  let inFlightText = '';
  inFlight.on('data', (chunk: Buffer) => (inFlightText += chunk));
  const inFlightEnded = new Promise((resolve) => inFlight.on('end', resolve));
  inFlight.write('GET /hold HTTP/1.1\r\nHost: x\r\n\r\n');
  await held;
  // An idle connection counts as idle from the stop on (serve() keeps no time per request):
  // each gets the drain's idle grace from then before it is closed.
  const grace = 1_000;
  const recent = await idleClient(web.port);
  t.teardown(() => recent.socket.destroy());
  ecdysis.stop();
  const closing = watch.firstClosing(idle);
  const drained = ecdysis.drain({ timeout: 30_000, idleTimeout: grace });
  // One becomes busy within its grace: its request is served, then it closes.
  const before = recent.text().length;
  recent.socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  t.is(await recent.ended, 'end');
  t.regex(recent.text().slice(before), /^HTTP\/1\.1 200 OK\r\n[\s\S]*Connection: close\r\n[\s\S]*ok$/);
  // Every idle one is closed (a FIN) once its grace is over, while the drain waits for the one in flight.
  t.deepEqual(new Set(await Promise.all(idle.map((c) => c.ended))), new Set(['end']));
  // With a response in flight, the closes are spread over turns (a few ms of them each), so that it keeps moving.
  const firstTurn = await closing;
  t.true(firstTurn < 2_000, `${firstTurn} of the 2,000 idle ones closed in the first turn that closed any`);
  release();
  await inFlightEnded;
  t.regex(inFlightText, /^HTTP\/1\.1 200 OK\r\n[\s\S]*Connection: close\r\n[\s\S]*held ok$/);
  // The one served within its grace may have closed before the drain counted it.
  const result = await drained;
  t.like(result, { closedIdle: 2_000, destroyed: 0, timedOut: false });
  t.true(result.connections >= 2_001 && result.completed === result.connections - 2_000, JSON.stringify(result));
});

test('HTTPS: an idle keep-alive connection is ended with close_notify by the drain (a clean end for the client) and counts as closed idle', async (t) => {
  const ecdysis = await Ecdysis.create(quiet);
  t.teardown(() => ecdysis.stop());
  const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
  const server = createHttpsServer(selfSignedCertificate(), (_req, res) => res.end('ok'));
  server.keepAliveTimeout = 600_000;
  web.serve(server);
  await ecdysis.ready();
  const client = tlsConnect({ host: '127.0.0.1', port: web.port, rejectUnauthorized: false });
  t.teardown(() => client.destroy());
  let text = '';
  const answered = new Promise<void>((resolve) => client.on('data', (chunk: Buffer) => ((text += chunk), text.endsWith('ok') && resolve())));
  const ended = new Promise<string>((resolve) => {
    client.on('end', () => resolve('end'));
    client.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
  });
  client.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await answered;
  ecdysis.stop();
  const drained = await ecdysis.drain({ timeout: 10_000, idleTimeout: 0 });
  t.is(await ended, 'end');
  t.like(drained, { connections: 1, completed: 0, closedIdle: 1, destroyed: 0, timedOut: false });
});
