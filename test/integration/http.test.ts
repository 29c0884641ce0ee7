/**
 * HTTP on ecdysis with real generations of test/fixtures/http-service.ts and
 * real node:http clients that never retry.
 */
import test from 'ava';
import { Agent, get, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { isAlive, startGenerations, upgradeBySignal, waitUntil } from '../helpers/generations.ts';
import { FAILURE_KINDS, HttpLoad, totalFailures, type LoadReport } from '../../examples/lib/http-load.ts';

function describe(report: LoadReport): string {
  return `${report.ok} ok of ${report.requests}; ${FAILURE_KINDS.map((k) => `${k} ${report.failures[k]}`).join(', ')}\n${report.errors.slice(0, 10).join('\n')}`;
}

function fetchText(port: number, path: string, agent: Agent | false = false): Promise<{ status: number; body: string; headers: IncomingMessage['headers'] }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('timeout')));
  });
}

test('ten upgrades under keep-alive and fresh-connection load: zero failed requests', async (t) => {
  const g = startGenerations(t, 'http-service.ts');
  const port = (await g.ready(0)).port as number;
  const load = new HttpLoad({ port, keepAliveClients: 6, freshClients: 3, durationMs: 90_000, samples: false }).start();
  for (let gen = 0; gen < 10; gen++) {
    await new Promise((r) => setTimeout(r, 150));
    await upgradeBySignal(g, gen);
  }
  await new Promise((r) => setTimeout(r, 200));
  const report = await load.stop();
  t.log(describe(report).split('\n')[0], `connections opened: ${report.connectionsOpened}`);
  t.is(totalFailures(report), 0, describe(report));
  t.true(report.ok > 500, `requests served: ${report.ok}`);
  t.true(report.generations.length >= 8, `answers from generations ${report.generations.join(',')}`);
});

test('a full stop under load: every request accepted before the stop gets its response', async (t) => {
  const g = startGenerations(t, 'http-service.ts');
  const ready = await g.ready(0);
  const port = ready.port as number;
  const load = new HttpLoad({ port, keepAliveClients: 6, freshClients: 3, durationMs: 60_000, samples: true }).start();
  await new Promise((r) => setTimeout(r, 300));
  // Slow requests in flight when the stop arrives must complete.
  const slow = [fetchText(port, '/slow?ms=800'), fetchText(port, '/slow?ms=400', new Agent({ keepAlive: true }))];
  await new Promise((r) => setTimeout(r, 100));
  const stopAt = Date.now();
  process.kill(ready.pid, 'SIGTERM');
  const slowResults = await Promise.all(slow);
  await waitUntil(() => !isAlive(ready.pid), 15_000, 'the stopped generation exits');
  await new Promise((r) => setTimeout(r, 100));
  const report = await load.stop();
  t.deepEqual(slowResults.map((r) => r.status), [200, 200]);
  t.is(slowResults[1]!.headers.connection, 'close', 'responses after the stop say Connection: close');
  // After the stop, new connections are refused: that is the stop. Nothing else may fail.
  const { refused, ...others } = report.failures;
  t.deepEqual(Object.values(others), [0, 0, 0, 0, 0], describe(report));
  t.true(report.samples.filter(([at, , f]) => f === 'refused' && at < stopAt).length === 0, 'nothing refused before the stop');
  t.true(refused > 0, 'connections after the stop are refused');
  const drained = await g.waitFor((r) => r.type === 'drained' && r.gen === 0);
  t.like(drained.result, { destroyed: 0, timedOut: false });
});

test('drain deadline: a request longer than the deadline is cut and reported destroyed; a shorter one completes', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_DRAIN_TIMEOUT: '3000', KEEP_ALIVE_TIMEOUT: '30000' });
  const first = await g.ready(0);
  const port = first.port as number;
  // A keep-alive connection to generation 0, to send the short request on while it drains.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  await fetchText(port, '/', agent);
  const long = fetchText(port, '/slow?ms=12000');
  await new Promise((r) => setTimeout(r, 150));
  process.kill(first.pid, 'SIGHUP');
  await g.event(0, 'exiting');
  const started = Date.now();
  const short = await fetchText(port, '/slow?ms=1000', agent);
  t.is(short.status, 200);
  t.is(short.headers['x-generation'], '0', 'served by the draining generation');
  t.is(short.headers.connection, 'close');
  const error = await t.throwsAsync(long);
  t.regex(error!.message, /socket hang up|ECONNRESET/);
  const elapsed = Date.now() - started;
  t.true(elapsed < 8_000, `cut at the deadline, not when it would have finished (${elapsed} ms)`);
  const drained = await g.waitFor((r) => r.type === 'drained' && r.gen === 0);
  t.like(drained.result, { connections: 2, completed: 1, destroyed: 1, timedOut: true });
});

test('streaming responses end through ecdysis.signal; an idle keep-alive connection is closed only after staying idle', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { KEEP_ALIVE_TIMEOUT: '5000' });
  const first = await g.ready(0);
  const port = first.port as number;
  // A keep-alive client with no idle timeout of its own: one request, then silence.
  const idle = connect(port, '127.0.0.1');
  t.teardown(() => idle.destroy());
  idle.setEncoding('utf8');
  let answeredAt = 0;
  const closedAt = new Promise<number>((resolve) => idle.on('end', () => resolve(Date.now())));
  idle.on('data', (chunk: string) => {
    if (chunk.includes('hello 0')) answeredAt = Date.now();
  });
  idle.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
  const stream = fetchText(port, '/stream');
  await waitUntil(() => answeredAt > 0, 5_000, 'the keep-alive answer');
  process.kill(first.pid, 'SIGHUP');
  await g.event(0, 'exiting');
  const shutdownAt = Date.now();
  const streamed = await stream;
  t.regex(streamed.body, /^start\n(tick\n)+end\n$/, 'the stream ended cleanly through ecdysis.signal');
  const idleFor = (await closedAt) - answeredAt;
  t.true(idleFor >= 4_900, `closed after ${idleFor} ms idle, not when shutdown began ${shutdownAt - answeredAt} ms after the answer`);
  const drained = await g.waitFor((r) => r.type === 'drained' && r.gen === 0, 15_000);
  const result = drained.result as { connections: number; closedIdle: number; completed: number; destroyed: number };
  t.like(result, { connections: 2, destroyed: 0, timedOut: false });
  t.is(result.completed + result.closedIdle, 2, JSON.stringify(result));
});

test('HTTP refusals carry their codes', async (t) => {
  const g = startGenerations(t, 'http-service.ts');
  const port = (await g.ready(0)).port as number;
  const upgraded = await fetchText(port, '/upgrade');
  t.regex(upgraded.body, /^upgraded \d+\n$/);
  await g.ready(1);
  // Generation 0 may still be draining this very connection: ask generation 1 on a fresh one.
  const refused = await fetchText(port, '/upgrade');
  if (refused.status === 409) t.regex(refused.body, /ERR_ECDYSIS_PARENT_ALIVE|ERR_ECDYSIS_STOPPING/);
  else t.regex(refused.body, /^upgraded/);
});

test('a second stop signal ends the drain at once', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_DRAIN_TIMEOUT: '60000' });
  const first = await g.ready(0);
  const long = fetchText(first.port as number, '/slow?ms=30000');
  await new Promise((r) => setTimeout(r, 200));
  process.kill(first.pid, 'SIGTERM');
  await g.event(0, 'exiting');
  await new Promise((r) => setTimeout(r, 300));
  const forcedAt = Date.now();
  process.kill(first.pid, 'SIGTERM');
  await t.throwsAsync(long);
  const drained = await g.waitFor((r) => r.type === 'drained' && r.gen === 0, 10_000);
  t.like(drained.result, { connections: 1, destroyed: 1, timedOut: true });
  await waitUntil(() => !isAlive(first.pid), 10_000, 'exits');
  t.true(Date.now() - forcedAt < 5_000);
});
