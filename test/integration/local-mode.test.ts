/**
 * Local mode, the code path of macOS and Windows, forced on Linux with
 * ECDYSIS_LOCAL=1: the examples run unchanged (compiled, importing 'ecdysis')
 * under load from clients that never retry. They serve; SIGHUP and `ecdysis
 * upgrade --socket` are refused with ERR_ECDYSIS_UPGRADE_UNSUPPORTED while
 * they keep serving; SIGTERM stops them with what is in flight finished and
 * nothing failed before the stop; the addon is never in their memory.
 */
import test from 'ava';
import { createSocket } from 'node:dgram';
import { readFileSync, mkdtempSync, rmSync, existsSync } from 'node:fs';
import { Agent, request, type IncomingMessage } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { freePort } from '../../examples/lib/free-port.ts';
import { HttpLoad, totalFailures, type LoadReport } from '../../examples/lib/http-load.ts';
import { cli } from '../helpers/cli.ts';
import { isAlive, startExample, waitUntil, type Generations, type Record_ } from '../helpers/generations.ts';
import { echoServer, relayClients } from '../helpers/relay-load.ts';

const LOCAL = { ECDYSIS_LOCAL: '1' };
/** The CLI in local mode too: Node connects, no addon. */
const localCli = (args: string[]) => cli(args, { prefix: ['env', 'ECDYSIS_LOCAL=1'] });

/** The process has no ecdysis addon mapped (a build from source or a prebuild). */
function addonLoaded(pid: number): boolean {
  return /\/ecdysis(\.[\w-]+)*\.node/.test(readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

function tempDir(t: ExecutionContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-local-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * GET on `agent`'s connection; `sent` resolves once the request is written to
 * the kernel (on an established connection the server accepted, when the agent
 * had one open), the promise itself with the response.
 */
function fetchText(port: number, path: string, agent: Agent): { sent: Promise<void>; response: Promise<{ status: number; body: string; headers: IncomingMessage['headers'] }> } {
  let markSent!: () => void;
  const sent = new Promise<void>((resolve) => (markSent = resolve));
  const response = new Promise<{ status: number; body: string; headers: IncomingMessage['headers'] }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, body, headers: res.headers }));
      res.on('error', reject);
    });
    req.on('finish', markSent);
    req.on('error', reject);
    req.setTimeout(15_000, () => req.destroy(new Error('timeout')));
    req.end();
  });
  return { sent, response };
}

/** Until the load has had `more` answers more than now (or a failure, which the test then reports). */
async function moreAnswers(load: HttpLoad, more: number): Promise<void> {
  const target = load.progress.ok + more;
  await waitUntil(() => load.progress.ok >= target || totalFailures(load.progress as LoadReport) > 0, 30_000, `${more} more answers`);
}

function failures(report: LoadReport, before?: number): Record<string, number> {
  const counted: Record<string, number> = {};
  for (const [at, , failure] of report.samples) if (failure && (before === undefined || at < before)) counted[failure] = (counted[failure] ?? 0) + 1;
  return counted;
}

/** SIGHUP, answered by a `refused` event with the code, the service still serving. */
async function refusedBySignal(g: Generations, pid: number, matches: (r: Record_) => boolean): Promise<Record_> {
  const since = g.records.length;
  process.kill(pid, 'SIGHUP');
  return g.waitFor((r) => matches(r) && g.records.indexOf(r) >= since, 30_000, 'the refusal of SIGHUP');
}

for (const example of ['http-server.ts', 'express.ts', 'fastify.ts']) {
  test(`${example} in local mode: serves under load, SIGHUP${example === 'http-server.ts' ? ' and ecdysis upgrade --socket' : ''} refused with the code while it keeps serving, SIGTERM stops it with nothing failed before the stop, the addon never loaded`, async (t) => {
    const port = await freePort();
    const control = join(tempDir(t), 'ctl.sock');
    const g = startExample(t, example, { ...LOCAL, PORT: String(port), EVENTS: 'json', ...(example === 'http-server.ts' ? { CONTROL_SOCKET: control } : {}) });
    const ready = await g.waitFor((r) => r.type === 'ready', 30_000, 'ready');
    const pid = ready.pid;
    t.false(addonLoaded(pid), 'no ecdysis .node in /proc/<pid>/maps');

    const load = new HttpLoad({ port, keepAliveClients: 4, freshClients: 2, durationMs: 120_000, samples: true }).start();
    t.teardown(() => void load.stop());
    await moreAnswers(load, 200);

    for (let i = 0; i < 3; i++) {
      const refused = await refusedBySignal(g, pid, (r) => r.type === 'refused');
      t.like(refused, { code: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED', reason: 'SIGHUP' });
      await moreAnswers(load, 100);
    }
    if (example === 'http-server.ts') {
      const status = await localCli(['status', '--socket', control, '--json']);
      t.is(status.code, 0, status.stderr);
      t.like(JSON.parse(status.stdout), { pid, generation: 0, state: 'ready', local: true });
      const text = await localCli(['status', '--socket', control]);
      t.regex(text.stdout, new RegExp(`^pid ${pid}, generation 0, ready, local mode \\(no upgrades: they need Linux\\)$`, 'm'));
      const upgrade = await localCli(['upgrade', '--socket', control]);
      t.is(upgrade.code, 1, `${upgrade.stdout}${upgrade.stderr}`);
      t.regex(upgrade.stderr, /upgrade failed: ERR_ECDYSIS_UPGRADE_UNSUPPORTED: .*local mode/);
      await moreAnswers(load, 100);
    }
    t.true(isAlive(pid));
    t.is(g.records.filter((r) => r.type === 'child-spawned').length, 0, 'no new generation was ever started');

    // A request in flight when the stop comes must complete: written on a
    // connection the service already answered on (so it was accepted).
    let slow: ReturnType<typeof fetchText>['response'] | undefined;
    if (example === 'http-server.ts') {
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      t.teardown(() => agent.destroy());
      t.is((await fetchText(port, '/', agent).response).status, 200);
      const inFlight = fetchText(port, '/?delay=1500', agent);
      await inFlight.sent;
      slow = inFlight.response;
    }
    const stopAt = Date.now();
    process.kill(pid, 'SIGTERM');
    const drained = await g.waitFor((r) => r.type === 'drained', 30_000, 'drained');
    const slowResult = await slow;
    await waitUntil(() => !isAlive(pid), 30_000, 'the stopped service exits');
    const report = await load.stop();
    t.log(`${report.ok} requests answered of ${report.requests}; after the stop: ${JSON.stringify(failures(report))}`);
    t.deepEqual(failures(report, stopAt), {}, 'nothing failed before the stop');
    // After the stop new connections are refused; one that reached the accept
    // queue in the instant before Node's close is reset (Linux drops its SYN
    // instead): at most one per client, whose next connection is refused.
    const after = failures(report);
    t.deepEqual(Object.keys(after).filter((kind) => kind !== 'refused' && kind !== 'reset'), []);
    t.true((after.reset ?? 0) <= 6, `resets after the stop: ${after.reset ?? 0}`);
    if (slowResult) {
      t.is(slowResult.status, 200);
      t.is(slowResult.headers.connection, 'close', 'a response after the stop says Connection: close');
    }
    t.like((drained as Record_ & { result: object }).result, { destroyed: 0, timedOut: false });
    t.false(existsSync(control), 'the control socket file is gone');
  });
}

/** An upstream that echoes, counting bytes. */
test('tcp-proxy.ts in local mode: relays under load, 3 SIGHUPs refused with the code, a relay open at SIGTERM finishes, byte counts equal end to end', async (t) => {
  const upstream = await echoServer(t);
  const g = startExample(t, 'tcp-proxy.ts', { ...LOCAL, UPSTREAM: `127.0.0.1:${upstream.port}`, PORT: '0' });
  const ready = await g.waitFor((r) => r.type === 'ready');
  const port = ready.port as number;
  t.false(addonLoaded(ready.pid));
  const { stats, stop } = relayClients(port);
  for (let i = 0; i < 3; i++) {
    const before = stats.relays;
    const refused = await refusedBySignal(g, ready.pid, (r) => r.type === 'event' && r.event === 'refused');
    t.is(refused.code, 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED');
    await waitUntil(() => stats.relays >= before + 20, 30_000, 'relays go on after the refusal');
  }
  await stop();

  // A relay open when the stop comes carries on until its client ends it.
  const held = connect(port, '127.0.0.1');
  let echoed = '';
  held.setEncoding('utf8').on('data', (d: string) => (echoed += d));
  held.write('before ');
  await waitUntil(() => echoed === 'before ', 30_000, 'the held relay echoes');
  process.kill(ready.pid, 'SIGTERM');
  await g.waitFor((r) => r.type === 'exiting', 30_000, 'exiting');
  held.write('after');
  await waitUntil(() => echoed === 'before after', 30_000, 'the held relay still echoes after the stop');
  held.end();
  const drained = await g.waitFor((r) => r.type === 'drained', 30_000, 'drained');
  await waitUntil(() => !isAlive(ready.pid), 30_000, 'the stopped proxy exits');
  t.log(`${stats.relays} relays, ${stats.sent} bytes each way`);
  t.deepEqual(stats.failures, []);
  t.true(stats.relays >= 60);
  t.is(stats.received, stats.sent);
  const heldBytes = 'before after'.length;
  t.is(upstream.received(), stats.sent + heldBytes);
  t.like(drained, { totals: { connections: stats.relays + 1, up: stats.sent + heldBytes, down: stats.sent + heldBytes }, result: { destroyed: 0, timedOut: false } });
});

test('dns-like.ts in local mode: questions at a steady rate, 3 SIGHUPs refused with the code, each question answered exactly once; SIGTERM drains', async (t) => {
  const g = startExample(t, 'dns-like.ts', { ...LOCAL, PORT: '0' });
  const ready = await g.waitFor((r) => r.type === 'ready');
  const port = ready.port as number;
  t.false(addonLoaded(ready.pid));
  const client = createSocket('udp4');
  t.teardown(() => client.close());
  const answers = new Map<number, number>();
  client.on('message', (data) => {
    const id = Number(data.toString().split(' ')[0]);
    answers.set(id, (answers.get(id) ?? 0) + 1);
  });
  let sent = 0;
  const sender = setInterval(() => client.send(`${sent++} host${sent % 7}.example`, port, '127.0.0.1'), 2);
  for (let i = 0; i < 3; i++) {
    const before = answers.size;
    const refused = await refusedBySignal(g, ready.pid, (r) => r.type === 'event' && r.event === 'refused');
    t.is(refused.code, 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED');
    await waitUntil(() => answers.size >= before + 50, 30_000, 'answers go on after the refusal');
  }
  clearInterval(sender);
  await waitUntil(() => answers.size === sent, 30_000, `every question answered (${answers.size} of ${sent})`);
  t.true([...answers.values()].every((n) => n === 1), 'none answered twice');
  process.kill(ready.pid, 'SIGTERM');
  const drained = await g.waitFor((r) => r.type === 'drained');
  t.is(drained.answered, sent);
  await waitUntil(() => !isAlive(ready.pid), 30_000, 'the stopped service exits');
});
