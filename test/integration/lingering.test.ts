/**
 * A drained generation that the application keeps alive (a timer, a pool's
 * socket, a process manager's IPC channel) no longer holds the next upgrade
 * back, and says what holds it; the default probation protects against a new
 * version that dies right after taking over, without refusing upgrades. Each
 * test here failed on the code before its fix (29408b4).
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HttpLoad, totalFailures } from '../../examples/lib/http-load.ts';
import { cli } from '../helpers/cli.ts';
import { isAlive, startGenerations, waitUntil, type Generations } from '../helpers/generations.ts';
import { lineRequest } from '../helpers/line-client.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-linger-'));

/** A server standing for a database: it keeps every connection a client opens. */
async function poolServer(t: ExecutionContext): Promise<number> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return (server.address() as { port: number }).port;
}

/** Upgrade through the service's own /upgrade endpoint: the outcome, as the generation saw it. */
async function upgradeThrough(port: number): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${port}/upgrade`);
  return (await response.text()).trim();
}

async function lingeringGenerationZero(t: ExecutionContext, g: Generations, holder: RegExp): Promise<void> {
  const first = await g.ready(0);
  const port = first.port as number;
  t.regex(await upgradeThrough(port), /^upgraded \d+$/);
  const second = await g.ready(1);
  // Generation 0 drains, then the application keeps it running.
  await g.waitFor((r) => r.type === 'drained' && r.pid === first.pid, 30_000, 'generation 0 drained');
  await g.event(1, 'parent-drained');
  t.true(isAlive(first.pid), 'generation 0 still runs: the application holds it');

  // It serves nothing and takes nothing back: generation 1 upgrades.
  t.regex(await upgradeThrough(port), /^upgraded \d+$/, 'generation 1 may upgrade although generation 0 still runs');
  const third = await g.ready(2);
  t.is(await (await fetch(`http://127.0.0.1:${port}/`)).text(), 'hello 2\n');
  t.not(third.pid, second.pid);

  // And the application is told what holds it, once, with a code.
  const warning = await g.waitFor((r) => r.type === 'warning' && r.code === 'ECDYSIS_LINGERING' && r.pid === first.pid, 30_000, 'the lingering warning');
  t.regex(warning.message as string, holder);
  t.regex(warning.message as string, /generation 0 .* still running/);
  t.is(g.records.filter((r) => r.type === 'warning' && r.code === 'ECDYSIS_LINGERING' && r.pid === first.pid).length, 1);
  t.true(isAlive(first.pid));
}

test('a timer keeps generation 0 alive after its drain: generation 1 still upgrades, and generation 0 is warned (ECDYSIS_LINGERING, naming the Timeout)', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_LINGER: 'timer' });
  await lingeringGenerationZero(t, g, /held by: .*Timeout/);
});

test("a pool's socket keeps generation 0 alive after its drain: generation 1 still upgrades, and the warning names the TCP socket", async (t) => {
  const pool = await poolServer(t);
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_LINGER: `socket:${pool}` });
  await lingeringGenerationZero(t, g, /held by: .*TCPSocketWrap/);
});

test("a process manager's IPC channel (pm2 fork mode) keeps generation 0 alive: generation 1 still upgrades, and the warning says process.disconnect()", async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_LINGER: 'ipc' }, { ipc: true });
  await lingeringGenerationZero(t, g, /IPC channel.*process\.disconnect\(\)/);
});

test('ecdysis status shows a drained parent that still runs as drained, a draining one as draining', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_LINGER: 'timer', FIXTURE_DRAIN_TIMEOUT: '3000' });
  const first = await g.ready(0);
  const status = async () => JSON.parse((await cli(['status', '--socket', control, '--json'])).stdout) as { listeners: { connections: number }[] } & Record<string, unknown>;
  // A request generation 0 holds through the upgrade, until its drain deadline.
  const slow = fetch(`http://127.0.0.1:${first.port as number}/slow?ms=600000`);
  slow.catch(() => {});
  for (let s = await status(); s.listeners[0]!.connections === 0; s = await status());
  const upgraded = await cli(['upgrade', '--socket', control]);
  t.is(upgraded.code, 0, upgraded.stderr);
  await g.ready(1);
  t.like(await status(), { generation: 1, parentAlive: true, parent: { pid: first.pid, state: 'draining' } });
  // The held request ends the drain at its deadline (FIXTURE_DRAIN_TIMEOUT); then generation 0 lingers.
  await g.event(1, 'parent-drained', 60_000);
  t.like(await status(), { generation: 1, parentAlive: true, parent: { pid: first.pid, state: 'drained' } });
  const text = await cli(['status', '--socket', control]);
  t.regex(text.stdout, new RegExp(`previous generation \\(pid ${first.pid}\\) drained but still running \\(lingering`));
  t.true(isAlive(first.pid));
});

test('the default probation: a new version that dies 300 ms after it took over is taken back by the old generation, with no option set', async (t) => {
  const dir = tempDir();
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_FAIL: '1.1:crash-after-ready', FIXTURE_STATE_DIR: dir, FIXTURE_PROBATION: 'default' });
  const first = await g.ready(0);
  const port = first.port as number;
  process.kill(first.pid, 'SIGHUP');
  const crashed = await g.ready(1);
  const failed = await g.event(0, 'successor-failed');
  t.is(failed.childPid, crashed.pid);
  t.is(await lineRequest({ port }, 'ping'), `pong 0 ${first.pid}`, 'generation 0 serves again');
});

test('the default probation never refuses an upgrade: the successor upgrades as soon as its parent is drained, and the parent in probation then ends', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_PROBATION: '600000' });
  const first = await g.ready(0);
  const port = first.port as number;
  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  t.teardown(() => load.stop());
  t.regex(await upgradeThrough(port), /^upgraded \d+$/);
  await g.event(1, 'parent-drained');
  t.true(isAlive(first.pid), 'generation 0 is in its probation');
  // In probation: idle, watching. The next upgrade is not refused...
  t.regex(await upgradeThrough(port), /^upgraded \d+$/);
  await g.ready(2);
  // ...and generation 0, released by generation 1, ends its probation (600 s) now.
  await waitUntil(() => !isAlive(first.pid), 30_000, 'generation 0 exited');
  t.false(g.records.some((r) => r.type === 'event' && r.event === 'successor-failed'));
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
});
