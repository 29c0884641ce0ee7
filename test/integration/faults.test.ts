/**
 * Fault injection: either generation killed at each step of the hand-over, the
 * parent frozen mid-upgrade, a signal storm, a stop during an upgrade. Each
 * under continuous load from clients that never retry: nothing is ever refused
 * while a generation holds the sockets, the service always ends up served by
 * exactly one generation, and no process is left behind.
 */
import test from 'ava';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { childrenOf, isAlive, startGenerations, waitUntil, zombieChildren, type Generations } from '../helpers/generations.ts';
import { connectionPerRequestLoad, lineRequest, newStats, streamingLoad, totalFailures, type LoadStats } from '../helpers/line-client.ts';

const stateDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-test-'));

function underLoad(t: import('ava').ExecutionContext, port: number) {
  const perRequest = newStats();
  const streaming = newStats();
  const loads = [connectionPerRequestLoad(port, perRequest), connectionPerRequestLoad(port, perRequest), streamingLoad(port, streaming)];
  let stopped: Promise<void> | undefined;
  const stop = () => (stopped ??= Promise.all(loads.map((l) => l.stop())).then(() => {}));
  t.teardown(stop);
  return {
    perRequest,
    streaming,
    async finish(): Promise<LoadStats[]> {
      await stop();
      t.log(`per-request ${perRequest.ok} ok ${JSON.stringify(perRequest.failures)}; streaming ${streaming.ok} ok ${JSON.stringify(streaming.failures)}`);
      return [perRequest, streaming];
    },
  };
}

const refusedOrTimedOut = (stats: LoadStats[]) => stats.reduce((sum, s) => sum + s.failures.refused + s.failures.timeout, 0);

async function created(g: Generations, gen: number, attempt = 1) {
  return g.waitFor((r) => r.type === 'created' && r.gen === gen && r.attempt === attempt, 30_000, `generation ${gen} attempt ${attempt} created`);
}

test('SIGKILL of the new generation before it is ready: the upgrade fails, the old generation never stopped serving', async (t) => {
  const dir = stateDir();
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_STATE_DIR: dir, FIXTURE_FAIL: '1.1:hang' });
  const first = await g.ready(0);
  const load = underLoad(t, first.port as number);
  process.kill(first.pid, 'SIGHUP');
  const child = await created(g, 1);
  process.kill(child.pid, 'SIGKILL');
  const failed = await g.event(0, 'child-failed');
  t.is(failed.code, 'ERR_ECDYSIS_CHILD_EXITED');
  t.regex(failed.message as string, /signal SIGKILL/);
  t.deepEqual(zombieChildren(first.pid), []);
  process.kill(first.pid, 'SIGHUP');
  const next = await g.ready(1);
  t.is(await lineRequest({ port: first.port as number }, 'ping'), `pong 1 ${next.pid}`);
  const stats = await load.finish();
  t.is(stats.reduce((sum, s) => sum + totalFailures(s), 0), 0, stats.flatMap((s) => s.errors).join('\n'));
});

test('SIGKILL of the new generation right after the commit: the old generation takes the service back', async (t) => {
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_PROBATION: '60000' });
  const first = await g.ready(0);
  const load = underLoad(t, first.port as number);
  process.kill(first.pid, 'SIGHUP');
  const ready = await g.event(0, 'child-ready');
  process.kill(ready.childPid as number, 'SIGKILL');
  const failed = await g.event(0, 'successor-failed');
  t.is(failed.signal, 'SIGKILL');
  t.is(await lineRequest({ port: first.port as number }, 'ping'), `pong 0 ${first.pid}`);
  t.deepEqual(zombieChildren(first.pid), []);
  const stats = await load.finish();
  t.is(refusedOrTimedOut(stats), 0, stats.flatMap((s) => s.errors).join('\n'));
});

test('SIGKILL of the old generation while the new one starts: the new one carries on alone and serves', async (t) => {
  const gate = join(stateDir(), 'gate');
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_READY_GATE: gate });
  const first = await g.ready(0);
  const load = underLoad(t, first.port as number);
  process.kill(first.pid, 'SIGHUP');
  const child = await created(g, 1);
  process.kill(first.pid, 'SIGKILL');
  writeFileSync(gate, '');
  const next = await g.ready(1);
  t.is(next.pid, child.pid);
  await g.event(1, 'parent-exited');
  t.is(await lineRequest({ port: first.port as number }, 'ping'), `pong 1 ${next.pid}`);
  // Connections the killed generation had accepted die with it; none is refused.
  const stats = await load.finish();
  t.is(refusedOrTimedOut(stats), 0, stats.flatMap((s) => s.errors).join('\n'));
  // And it upgrades again: it is the service now.
  process.kill(next.pid, 'SIGHUP');
  await g.ready(2);
});

test('SIGKILL of the old generation while it drains: nothing changes for the new one', async (t) => {
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_DRAIN_TIMEOUT: '60000' });
  const first = await g.ready(0);
  const load = underLoad(t, first.port as number);
  process.kill(first.pid, 'SIGHUP');
  await g.event(0, 'child-ready');
  process.kill(first.pid, 'SIGKILL');
  const next = await g.ready(1);
  await g.event(1, 'parent-exited');
  t.is(await lineRequest({ port: first.port as number }, 'ping'), `pong 1 ${next.pid}`);
  const stats = await load.finish();
  t.is(refusedOrTimedOut(stats), 0, stats.flatMap((s) => s.errors).join('\n'));
});

test('SIGSTOP of the old generation during an upgrade: the new one gives up at the timeout, the old one serves on when continued', async (t) => {
  const gate = join(stateDir(), 'gate');
  // Long enough for a new generation to start on a busy machine (it must be waiting at the gate when the parent stops).
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_UPGRADE_TIMEOUT: '8000', FIXTURE_READY_GATE: gate });
  const first = await g.ready(0);
  const port = first.port as number;
  const load = underLoad(t, port);
  process.kill(first.pid, 'SIGHUP');
  await created(g, 1);
  process.kill(first.pid, 'SIGSTOP');
  t.teardown(() => isAlive(first.pid) && process.kill(first.pid, 'SIGCONT'));
  writeFileSync(gate, '');
  const gaveUp = await g.waitFor((r) => r.type === 'ready-failed' && r.gen === 1, 60_000, 'the new generation gave up');
  t.is(gaveUp.code, 'ERR_ECDYSIS_COMMIT_TIMEOUT');
  await waitUntil(() => !isAlive(gaveUp.pid), 30_000, 'the new generation exited');
  process.kill(first.pid, 'SIGCONT');
  // Whichever it reads first (its timeout, the child's exit, or the ready the
  // child sent before giving up), the old generation ends up serving.
  await g.waitFor((r) => r.gen === 0 && (r.event === 'child-failed' || r.event === 'successor-failed'), 30_000, 'the outcome');
  t.is(await lineRequest({ port }, 'ping'), `pong 0 ${first.pid}`);
  t.deepEqual(zombieChildren(first.pid), []);
  const stats = await load.finish();
  t.is(stats[0]!.failures.refused + stats[1]!.failures.refused, 0, stats.flatMap((s) => s.errors).join('\n'));
});

test('a signal storm: one upgrade, every other trigger refused, nothing killed', async (t) => {
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_READY_DELAY: '500', FIXTURE_DRAIN_TIMEOUT: '60000' });
  const first = await g.ready(0);
  const port = first.port as number;
  const load = underLoad(t, port);
  // An idle connection keeps generation 0 draining, so generation 1's parent is alive throughout.
  const { connect } = await import('node:net');
  const idle = connect(port, '127.0.0.1');
  t.teardown(() => idle.destroy());
  await new Promise((r) => idle.once('connect', r));
  idle.write('ping\n');
  await new Promise((r) => idle.once('data', r));
  // Standard signals are not queued: a burst may reach the process as fewer deliveries.
  for (let i = 0; i < 200; i++) process.kill(first.pid, 'SIGHUP');
  const next = await g.ready(1);
  await g.event(0, 'child-ready');
  for (let i = 0; i < 200; i++) process.kill(next.pid, 'SIGHUP');
  const refusal = await g.waitFor((r) => r.gen === 1 && r.event === 'refused', 30_000, 'a refusal by generation 1');
  t.is(refusal.code, 'ERR_ECDYSIS_PARENT_ALIVE');
  for (let i = 0; i < 200; i++) process.kill(first.pid, 'SIGHUP'); // the draining one, too
  await g.waitFor((r) => r.gen === 0 && r.event === 'refused' && r.code === 'ERR_ECDYSIS_STOPPING', 30_000, 'a refusal by generation 0');
  idle.destroy();
  await g.event(1, 'parent-exited');
  const exit = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => {
    if (g.root.exitCode !== null || g.root.signalCode !== null) return resolve([g.root.exitCode, g.root.signalCode]);
    g.root.once('exit', (code, signal) => resolve([code, signal]));
  });
  t.deepEqual(exit, [0, null], 'generation 0 exited by itself after its drain');
  t.is(g.records.filter((r) => r.type === 'created' && r.gen === 1).length, 1, 'exactly one new generation');
  t.deepEqual(childrenOf([next.pid]), [], 'generation 1 started nothing');
  t.true(isAlive(next.pid));
  t.is(await lineRequest({ port }, 'ping'), `pong 1 ${next.pid}`);
  const stats = await load.finish();
  t.is(stats.reduce((sum, s) => sum + totalFailures(s), 0), 0, stats.flatMap((s) => s.errors).join('\n'));
});

test('SIGTERM during an upgrade: the upgrade is abandoned, the new generation killed, the old one stops gracefully', async (t) => {
  const gate = join(stateDir(), 'gate');
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_READY_GATE: gate });
  const first = await g.ready(0);
  const load = underLoad(t, first.port as number);
  process.kill(first.pid, 'SIGHUP');
  const child = await created(g, 1);
  process.kill(first.pid, 'SIGTERM');
  t.teardown(() => writeFileSync(gate, ''));
  const failed = await g.event(0, 'child-failed');
  t.is(failed.code, 'ERR_ECDYSIS_STOPPING');
  t.like(await g.waitFor((r) => r.type === 'exiting' && r.gen === 0), { mode: 'stop' });
  await waitUntil(() => !isAlive(first.pid) && !isAlive(child.pid), 30_000, 'both gone');
  const stats = await load.finish();
  // Refusals come after the stop, as they should; nothing accepted was reset or dropped.
  t.is(stats.reduce((sum, s) => sum + s.failures.reset + s.failures.closed + s.failures.timeout + s.failures.other, 0), 0, stats.flatMap((s) => s.errors).join('\n'));
  t.true(stats[1]!.cleanCloses >= 1, 'the held connection was closed cleanly');
});
