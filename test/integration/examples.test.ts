/**
 * The examples, run as a user would (compiled, importing 'ecdysis'), upgraded
 * under load from clients that never retry.
 */
import test from 'ava';
import { createSocket } from 'node:dgram';
import { cpSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:net';
import { startLoadProcess } from '../../examples/lib/load-runner.ts';
import type { WsLoadReport } from '../../examples/lib/ws-load.ts';
import { totalFailures, type LoadReport } from '../../examples/lib/http-load.ts';
import { compiledRoot, isAlive, repoRoot, startExample, upgrades, waitUntil } from '../helpers/generations.ts';
import { echoServer, relayClients } from '../helpers/relay-load.ts';

// The examples run compiled (build/tsc); tsc does not copy grpc-server.ts's .proto there.
test.before(() => cpSync(join(repoRoot, 'examples/grpc'), join(compiledRoot, 'examples/grpc'), { recursive: true }));

test('tcp-proxy: 10 upgrades under load, no relay fails, byte counts equal end to end', async (t) => {
  const upstream = await echoServer(t);
  const g = startExample(t, 'tcp-proxy.ts', { UPSTREAM: `127.0.0.1:${upstream.port}`, PORT: '0', PROBATION: '0' });
  const port = (await g.ready(0)).port as number;
  const { stats, stop } = relayClients(port);
  const pids = await upgrades(g, 10);
  await stop();
  process.kill(pids.at(-1)!, 'SIGTERM');
  await waitUntil(() => !isAlive(pids.at(-1)!), 30_000, 'the last generation stopped');
  const totals = g.records.filter((r) => r.type === 'drained').map((r) => r.totals as { connections: number; up: number; down: number });
  const proxied = totals.reduce((sum, x) => ({ connections: sum.connections + x.connections, up: sum.up + x.up, down: sum.down + x.down }), { connections: 0, up: 0, down: 0 });
  t.log(`${stats.relays} relays, ${stats.sent} bytes each way; the proxy counted ${JSON.stringify(proxied)} over ${totals.length} generations`);
  t.deepEqual(stats.failures, []);
  t.true(stats.relays > 20);
  t.is(stats.received, stats.sent);
  t.is(upstream.received(), stats.sent);
  t.is(totals.length, 11, 'every generation reported');
  t.deepEqual(proxied, { connections: stats.relays, up: stats.sent, down: stats.sent });
});

test('udp-proxy: 10 upgrades under a steady rate of requests: each answered exactly once, bytes equal', async (t) => {
  const echo = createSocket('udp4');
  let echoed = 0;
  echo.on('message', (data, from) => {
    echoed += data.length;
    echo.send(data, from.port, from.address);
  });
  await new Promise<void>((resolve) => echo.bind(0, '127.0.0.1', resolve));
  t.teardown(() => echo.close());
  const g = startExample(t, 'udp-proxy.ts', { UPSTREAM: `127.0.0.1:${echo.address().port}`, PORT: '0', PROBATION: '0', SESSION_IDLE_MS: '300' });
  const port = (await g.ready(0)).port as number;
  const clients = [createSocket('udp4'), createSocket('udp4')];
  t.teardown(() => clients.forEach((c) => c.close()));
  const answers = new Map<string, number>();
  let sentBytes = 0;
  let receivedBytes = 0;
  for (const c of clients) {
    c.on('message', (data) => {
      receivedBytes += data.length;
      const id = data.toString().split(' ')[0]!;
      answers.set(id, (answers.get(id) ?? 0) + 1);
    });
  }
  let sent = 0;
  const sender = setInterval(() => {
    for (const [n, c] of clients.entries()) {
      const request = Buffer.from(`${n}-${sent} ${'x'.repeat(sent % 500)}`);
      sentBytes += request.length;
      c.send(request, port, '127.0.0.1');
    }
    sent++;
  }, 3);
  await upgrades(g, 10);
  clearInterval(sender);
  await waitUntil(() => answers.size === sent * 2, 30_000, `every request answered (${answers.size} of ${sent * 2})`);
  t.log(`${sent * 2} requests, ${answers.size} answered`);
  t.is([...answers.values()].filter((n) => n !== 1).length, 0, 'none answered twice');
  t.is(receivedBytes, sentBytes);
  t.is(echoed, sentBytes);
});

test('dns-like: questions at a steady rate across 5 upgrades: each answered exactly once, by several generations', async (t) => {
  const g = startExample(t, 'dns-like.ts', { PORT: '0' });
  const port = (await g.ready(0)).port as number;
  const client = createSocket('udp4');
  t.teardown(() => client.close());
  const answers = new Map<number, string[]>();
  client.on('message', (data) => {
    const [id, name, address, gen] = data.toString().split(' ');
    const list = answers.get(Number(id)) ?? [];
    list.push(`${name} ${address} ${gen}`);
    answers.set(Number(id), list);
  });
  let sent = 0;
  const sender = setInterval(() => client.send(`${sent++} host${sent % 7}.example`, port, '127.0.0.1'), 2);
  await upgrades(g, 5);
  clearInterval(sender);
  await waitUntil(() => answers.size === sent, 30_000, `every question answered (${answers.size} of ${sent})`);
  t.true([...answers.values()].every((list) => list.length === 1));
  t.true(new Set([...answers.values()].map((list) => list[0]!.split(' ')[2])).size >= 4, 'answers from several generations');
});

test('tunnel: relays move through 5 upgrades; a long-lived client and the upstream never notice (no reconnect, every byte once, in order)', async (t) => {
  const upstream = await echoServer(t);
  const g = startExample(t, 'tunnel.ts', { UPSTREAM: `127.0.0.1:${upstream.port}`, PORT: '0', PROBATION: '0' });
  const port = (await g.ready(0)).port as number;
  const client = connect(port, '127.0.0.1');
  t.teardown(() => client.destroy());
  let received = '';
  let closed = false;
  client.setEncoding('utf8').on('data', (d: string) => (received += d));
  client.on('close', () => (closed = true));
  let sent = '';
  const timer = setInterval(() => {
    const line = `${sent.length}\n`;
    sent += line;
    client.write(line);
  }, 5);
  await upgrades(g, 5);
  clearInterval(timer);
  await waitUntil(() => received.length === sent.length, 30_000, 'every byte echoed back');
  t.is(received, sent, 'every byte once, in order');
  t.false(closed, 'the client connection was never closed');
  t.is(upstream.connections(), 1, 'the upstream saw one connection, never a reconnect');
  const last = g.records.find((r) => r.type === 'ready' && r.gen === 5)!;
  t.like(last, { relays: 1, opened: 1 }, 'the relay and its count arrived in generation 5');
});

test('websocket: 100 clients that reconnect on 1001, numbering their messages, across 10 upgrades: none lost or repeated, no close but 1001 (and the clients\' own 1000)', async (t) => {
  const g = startExample(t, 'websocket.ts', { PORT: '0', DRAIN_TIMEOUT: '20000' });
  const port = (await g.ready(0)).port as number;
  const load = startLoadProcess({ protocol: 'ws', port, clients: 100, window: 4, durationMs: 240_000 });
  t.teardown(() => load.kill());
  await load.started;
  const pids = await upgrades(g, 10);
  const report = (await load.stop()) as unknown as WsLoadReport;
  process.kill(pids.at(-1)!, 'SIGTERM');
  await waitUntil(() => !isAlive(pids.at(-1)!), 30_000, 'the last generation stopped');
  t.log(`${report.sent} messages sent, ${report.acknowledged} acknowledged, ${report.resent} sent again after a 1001, ${report.connections} connections; closes ${JSON.stringify(report.closes)}; generations ${report.generations.join(',')}`);
  t.deepEqual(report.failures, []);
  t.deepEqual(Object.keys(report.closes).sort(), ['1000', '1001']);
  t.is(report.acknowledged, report.sent, 'every message a client sent was acknowledged in the end');
  // A client still reconnecting when the next upgrade comes skips a generation: not every upgrade closes every client.
  t.true(report.closes['1001']! >= 100, 'clients were told to go away');
  const drains = g.records.filter((r) => r.type === 'drained') as unknown as { result: { timedOut: boolean; destroyed: number }; totals: { connections: number; handled: number; ignored: number } }[];
  t.is(drains.length, 11, 'every generation drained');
  for (const drain of drains) t.like(drain.result, { timedOut: false, destroyed: 0 });
  t.true(drains.every((d) => d.totals.connections > 0), 'every generation served WebSocket clients');
  // Handled once each: the generations together handled exactly what the clients saw acknowledged.
  t.is(drains.reduce((sum, d) => sum + d.totals.handled, 0), report.acknowledged);
  t.true(report.acknowledged > 2_000);
});

test('http2-server (h2c): 5 upgrades under 4 sessions of 20 streams from a separate process: 0 failed streams, every old generation drained by GOAWAY', async (t) => {
  const g = startExample(t, 'http2-server.ts', { PORT: '0', DRAIN_TIMEOUT: '20000' });
  const port = (await g.ready(0)).port as number;
  const load = startLoadProcess({ protocol: 'http2', port, sessions: 4, streamsPerSession: 20, slowPath: '/slow?ms=300', durationMs: 240_000 });
  t.teardown(() => load.kill());
  await load.started;
  const pids = await upgrades(g, 5);
  const report = await load.stop();
  t.log(`${report.ok} streams ok of ${report.requests} (${report.resentUnprocessed} refused unprocessed by the client and sent again)`);
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  process.kill(pids.at(-1)!, 'SIGTERM');
  await waitUntil(() => !isAlive(pids.at(-1)!), 30_000, 'the last generation stopped');
  const drains = g.records.filter((r) => r.type === 'drained').map((r) => r.result as { timedOut: boolean; sessions: number; destroyed: number });
  t.is(drains.length, 6, 'every generation drained');
  for (const drain of drains) t.like(drain, { timedOut: false, destroyed: 0 });
  t.true(drains.slice(0, 5).every((drain) => drain.sessions > 0), 'the old generations had sessions to drain');
});

for (const retries of [true, false]) {
  test(`grpc-server: unary and server-streaming calls from a separate process (grpc-js ${retries ? 'as configured by default' : 'with retries disabled'}) across 10 upgrades: ${retries ? '0 failed calls' : 'no call fails but those refused unprocessed'}, every stream complete from one generation`, async (t) => {
    const g = startExample(t, 'grpc-server.ts', { PORT: '0', DRAIN_TIMEOUT: '20000' });
    const port = (await g.ready(0)).port as number;
    const load = startLoadProcess({ protocol: 'grpc', port, retries, clients: 8, streamEvery: 4, streamCount: 5, streamIntervalMs: 100, durationMs: 240_000 });
    t.teardown(() => load.kill());
    await load.started;
    const pids = await upgrades(g, 10);
    const report = (await load.stop()) as LoadReport & { refusedUnprocessed: number };
    t.log(`${report.ok} calls ok of ${report.requests}; ${report.refusedUnprocessed} refused unprocessed; generations ${report.generations.join(',')}`);
    // With retries disabled, grpc-js gives the application a call the server never processed
    // (queued by the client when the GOAWAY came, see docs/api.md): the only failure allowed.
    t.is(totalFailures(report), retries ? 0 : report.refusedUnprocessed, report.errors.join('\n'));
    t.true(report.generations.length >= 8, 'calls were answered by most generations');
    process.kill(pids.at(-1)!, 'SIGTERM');
    await waitUntil(() => !isAlive(pids.at(-1)!), 30_000, 'the last generation stopped');
    const drains = g.records.filter((r) => r.type === 'drained').map((r) => r.result as { timedOut: boolean; sessions: number; destroyed: number; streamsDestroyed: number });
    t.is(drains.length, 11, 'every generation drained');
    for (const drain of drains) t.like(drain, { timedOut: false, destroyed: 0, streamsDestroyed: 0 });
    t.true(drains.slice(0, 10).every((drain) => drain.sessions > 0), 'the old generations had gRPC sessions to drain');
  });
}

test('prometheus (prom-client): the application\'s own metrics and ecdysis\'s in one registry, counters going on across 3 upgrades', async (t) => {
  const g = startExample(t, 'prometheus.ts', { PORT: '0', METRICS_PORT: '0', EVENTS: 'json' });
  const first = await g.ready(0);
  for (let i = 0; i < 3; i++) await fetch(`http://127.0.0.1:${first.port as number}/`).then((r) => r.text());
  for (let gen = 0; gen < 3; gen++) {
    const current = await g.ready(gen);
    // Each old generation spends its probation idle; the next upgrade may begin once it is drained.
    if (gen > 0) await g.waitFor((r) => r.type === 'parent-drained' && r.pid === current.pid);
    process.kill(current.pid, 'SIGHUP');
  }
  const last = await g.ready(3);
  const text = await (await fetch(`http://127.0.0.1:${last.metricsPort as number}/metrics`)).text();
  t.regex(text, /^# TYPE ecdysis_upgrades_total counter$/m);
  t.regex(text, /^ecdysis_upgrades_total\{outcome="ok"\} 3$/m);
  t.regex(text, /^ecdysis_generation 3$/m);
  t.regex(text, /^# TYPE app_requests_total counter$/m);
  t.regex(text, /^process_cpu_user_seconds_total /m, "prom-client's default metrics");
});
