/**
 * Real generations of test/fixtures/line-service.ts, upgraded with real
 * signals, driven by real clients on loopback.
 */
import test from 'ava';
import { mkdtempSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  isAlive,
  listeningInode,
  repoRoot,
  socketInodes,
  startGenerations,
  upgradeBySignal,
  waitUntil,
  zombieChildren,
} from '../helpers/generations.ts';
import { connectionPerRequestLoad, lineRequest, newStats, streamingLoad, totalFailures } from '../helpers/line-client.ts';

test('five chained upgrades: new pid and generation each time, old one exits, same listening socket', async (t) => {
  const g = startGenerations(t, 'line-service.ts');
  const first = await g.ready(0);
  const port = first.port as number;
  const inode = listeningInode(port);
  t.truthy(inode);
  const pids = [first.pid];
  for (let gen = 0; gen < 5; gen++) {
    const { oldPid, newPid } = await upgradeBySignal(g, gen);
    t.false(isAlive(oldPid), `generation ${gen} exited`);
    t.false(pids.includes(newPid), 'a new pid');
    pids.push(newPid);
    t.is(listeningInode(port), inode, 'the same kernel socket');
    t.true(socketInodes(newPid).includes(inode!), 'the new generation holds it');
    t.is(await lineRequest({ port }, 'ping'), `pong ${gen + 1} ${newPid}`);
  }
  const exits = g.records.filter((r) => r.type === 'exiting');
  t.deepEqual(exits.map((r) => r.gen), [0, 1, 2, 3, 4]);
  t.true(exits.every((r) => r.mode === 'upgrade'));
});

test('continuous clients across ten upgrades: nothing refused, reset or dropped', async (t) => {
  const g = startGenerations(t, 'line-service.ts');
  const port = (await g.ready(0)).port as number;
  const perRequest = newStats();
  const streaming = newStats();
  const loads = [
    connectionPerRequestLoad(port, perRequest),
    connectionPerRequestLoad(port, perRequest),
    streamingLoad(port, streaming),
    streamingLoad(port, streaming),
  ];
  for (let gen = 0; gen < 10; gen++) {
    await new Promise((r) => setTimeout(r, 100));
    await upgradeBySignal(g, gen);
  }
  await new Promise((r) => setTimeout(r, 200));
  await Promise.all(loads.map((l) => l.stop()));
  t.log(`per-request: ${perRequest.ok} ok, streaming: ${streaming.ok} ok, ${streaming.cleanCloses} clean closes`);
  t.is(totalFailures(perRequest), 0, perRequest.errors.join('\n'));
  t.is(totalFailures(streaming), 0, streaming.errors.join('\n'));
  t.true(perRequest.generations.size >= 8, `answers came from ${perRequest.generations.size} generations`);
  t.true(streaming.cleanCloses >= 10, 'held connections were closed cleanly by their generation');
  t.true(perRequest.ok > 100 && streaming.ok > 100);
});

for (const [behaviour, code] of [
  ['exit', 'ERR_ECDYSIS_CHILD_EXITED'],
  ['throw', 'ERR_ECDYSIS_CHILD_EXITED'],
  ['hang', 'ERR_ECDYSIS_CHILD_TIMEOUT'],
] as const) {
  test(`a new generation that fails (${behaviour}) costs nothing: ${code}, old one serves, next upgrade works`, async (t) => {
    const stateDir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
    const g = startGenerations(t, 'line-service.ts', {
      FIXTURE_FAIL: `1.1:${behaviour}`,
      FIXTURE_STATE_DIR: stateDir,
      // Only the hanging child should ever meet the timeout, however loaded the machine.
      FIXTURE_UPGRADE_TIMEOUT: behaviour === 'hang' ? '10000' : '60000',
    });
    const first = await g.ready(0);
    const port = first.port as number;
    const stats = newStats();
    const load = connectionPerRequestLoad(port, stats);
    process.kill(first.pid, 'SIGHUP');
    const failed = await g.event(0, 'child-failed');
    t.is(failed.code, code);
    const failedChild = g.records.find((r) => r.type === 'created' && r.gen === 1)!;
    t.truthy(failedChild, 'the child was started');
    await waitUntil(() => !isAlive(failedChild.pid), 5_000, 'failed child gone');
    t.deepEqual(zombieChildren(first.pid), [], 'the failed child was reaped');
    t.is(await lineRequest({ port }, 'ping'), `pong 0 ${first.pid}`, 'the old generation still serves');
    t.false(g.records.some((r) => r.gen === 0 && r.type === 'exiting'));

    process.kill(first.pid, 'SIGHUP');
    const second = await g.ready(1);
    await g.event(1, 'parent-exited');
    t.not(second.pid, failedChild.pid);
    await load.stop();
    t.is(totalFailures(stats), 0, stats.errors.join('\n'));
    t.is(await lineRequest({ port }, 'ping'), `pong 1 ${second.pid}`);
  });
}

test('refusals: upgrade before ready, during an upgrade, and while the parent is alive', async (t) => {
  const stateDir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const g = startGenerations(t, 'line-service.ts', {
    FIXTURE_FAIL: '1.1:hang',
    FIXTURE_STATE_DIR: stateDir,
    FIXTURE_UPGRADE_TIMEOUT: '8000',
    FIXTURE_DRAIN_TIMEOUT: '4000',
    FIXTURE_READY_DELAY: '2500',
  });
  // Before ready: the signal is refused.
  const created = await g.waitFor((r) => r.type === 'created' && r.gen === 0);
  process.kill(created.pid, 'SIGHUP');
  const refused = await g.event(0, 'refused');
  t.is(refused.code, 'ERR_ECDYSIS_NOT_READY');
  const first = await g.ready(0);
  const port = first.port as number;

  // During an upgrade (generation 1's first attempt hangs).
  const pending = lineRequest({ port }, 'upgrade', 30_000);
  await g.event(0, 'child-spawned');
  t.is(await lineRequest({ port }, 'upgrade', 30_000), 'error ERR_ECDYSIS_UPGRADE_IN_PROGRESS');
  t.is(await pending, 'error ERR_ECDYSIS_CHILD_TIMEOUT');

  // While the parent is alive: an idle raw connection keeps generation 0 draining.
  const { connect } = await import('node:net');
  const idle = connect(port, '127.0.0.1');
  await new Promise((r) => idle.once('connect', r));
  await new Promise((r) => setTimeout(r, 50));
  const upgraded = await lineRequest({ port }, 'upgrade', 30_000);
  t.regex(upgraded, /^upgraded \d+$/);
  const second = await g.ready(1);
  t.true(second.parentAlive as boolean);
  t.is(await lineRequest({ port }, 'upgrade', 30_000), 'error ERR_ECDYSIS_PARENT_ALIVE');
  idle.destroy();
  await g.event(1, 'parent-exited');
  t.regex(await lineRequest({ port }, 'upgrade', 30_000), /^upgraded \d+$/);
});

test('after 20 upgrades: same fd count, no zombies, no private env, no unregistered fd inherited', async (t) => {
  const g = startGenerations(t, 'line-service.ts');
  const first = await g.ready(0);
  const port = first.port as number;
  const privatePort = (await g.waitFor((r) => r.type === 'private')).port as number;
  const privateInode = listeningInode(privatePort);
  t.truthy(privateInode);
  const listening = listeningInode(port)!;
  // Each generation's fd table once it is quiet (its parent exited), asked over a connection
  // (which is in the table: one accepted socket, in every generation alike).
  const quiet: Record<string, string>[] = [];
  for (let gen = 0; gen < 20; gen++) {
    await upgradeBySignal(g, gen);
    quiet.push(JSON.parse((await lineRequest({ port }, 'fds', 30_000)).slice(4)) as Record<string, string>);
  }

  const tables = g.records.filter((r) => r.type === 'fds' && r.gen > 0);
  t.is(tables.length, 20);
  // Regular files that Node itself reads now and then (Node 24 was seen reading the CA bundle,
  // /etc/ssl/certs/ca-certificates.crt) are not counted; sockets, pipes, eventfds, pidfds, devices are.
  const counted = (fds: Record<string, string>) => Object.values(fds).filter((target) => !target.startsWith('/') || target.startsWith('/dev/'));
  const counts = quiet.map((fds) => counted(fds).length);
  t.log(`fd counts per generation after their parent exited: ${counts.join(' ')}`);
  t.log(`not counted in generation 1: ${JSON.stringify(Object.values(quiet[0]!).filter((target) => !counted(quiet[0]!).includes(target)))}`);
  const kinds = (fds: Record<string, string>) => counted(fds).map((l) => l.replace(/\[\d+\]$/, '')).sort().join(' ');
  const odd = quiet.map((fds, i) => [i + 1, fds] as const).filter(([, fds]) => kinds(fds) !== kinds(quiet[0]!));
  t.true(counts.every((c) => c === counts[0]), `fd counts stay flat: ${counts.join(' ')}; generation 1: ${JSON.stringify(quiet[0])}; others: ${JSON.stringify(odd)}`);
  for (const table of tables) {
    const fds = table.fds as Record<string, string>;
    const sockets = Object.values(fds).filter((l) => l.startsWith('socket:'));
    t.false(sockets.includes(`socket:[${privateInode}]`), `generation ${table.gen} did not inherit the private socket`);
    t.is(sockets.filter((l) => l === `socket:[${listening}]`).length, 2, 'the listener: the registry fd and the accepting dup, nothing more');
    t.false('3' in fds && fds['3']!.startsWith('socket:'), 'the control channel is closed once the parent is gone');
    t.false('4' in fds && fds['4']!.startsWith('socket:'), 'and so is the hand-over channel');
  }
  const readies = g.records.filter((r) => r.type === 'ready' && r.gen > 0);
  t.true(readies.every((r) => r.handoffEnv === null), 'ECDYSIS_HANDOFF removed from process.env');
  const alive = [...g.pids].filter(isAlive);
  const newest = g.records.find((r) => r.type === 'ready' && r.gen === 20)!.pid;
  t.deepEqual(alive, [newest], 'only the newest generation is running');
  // This process's own children (generation 0 of this test and the others running beside it) are
  // reaped by its event loop, which may not have seen a SIGCHLD yet on a loaded machine: wait for that.
  await waitUntil(() => zombieChildren(process.pid).length === 0, 10_000, 'this process reaped its children').catch(() => {});
  t.deepEqual(zombieChildren(process.pid), []);
  t.deepEqual(zombieChildren(newest), []);
});

test('Unix socket: same socket across upgrades, path kept on upgrade, unlinked on stop', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const path = join(dir, 'svc.sock');
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_UNIX: path });
  const first = await g.ready(0);
  t.is(await lineRequest({ path }, 'ping'), `pong 0 ${first.pid}`);
  const { newPid } = await upgradeBySignal(g, 0);
  const { existsSync } = await import('node:fs');
  t.true(existsSync(path), 'path kept through the upgrade');
  t.is(await lineRequest({ path }, 'ping'), `pong 1 ${newPid}`);
  process.kill(newPid, 'SIGTERM');
  const exiting = await g.waitFor((r) => r.type === 'exiting' && r.gen === 1);
  t.is(exiting.mode, 'stop');
  await waitUntil(() => !isAlive(newPid), 10_000, 'stopped generation exits');
  t.false(existsSync(path), 'path unlinked on a full stop');
  await t.throwsAsync(lineRequest({ port: first.port as number }, 'ping'), { code: 'ECONNREFUSED' });
});

test('PID file: written by each ready generation, taken back by a parent whose upgrade failed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const pidFile = join(dir, 'svc.pid');
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_PID_FILE: pidFile, FIXTURE_FAIL: '2.1:exit', FIXTURE_STATE_DIR: dir });
  const first = await g.ready(0);
  t.is(readFileSync(pidFile, 'utf8'), `${first.pid}\n`);
  const { newPid } = await upgradeBySignal(g, 0);
  t.is(readFileSync(pidFile, 'utf8'), `${newPid}\n`);
  writeFileSync(pidFile, 'garbage\n'); // as if a failed child had written it
  process.kill(newPid, 'SIGHUP');
  const failed = await g.event(1, 'child-failed');
  t.is(failed.code, 'ERR_ECDYSIS_CHILD_EXITED');
  await waitUntil(() => readFileSync(pidFile, 'utf8') === `${newPid}\n`, 5_000, 'the PID file names the serving generation again');
  process.kill(newPid, 'SIGTERM');
  await waitUntil(() => !isAlive(newPid), 10_000, 'stopped');
  const { existsSync } = await import('node:fs');
  t.false(existsSync(pidFile), 'removed on a full stop');
});

test('command: the next generation can start from another directory (a new release); a bad command is ERR_ECDYSIS_SPAWN_FAILED', async (t) => {
  const release = realpathSync(mkdtempSync(join(tmpdir(), 'ecdysis-release-')));
  // A release directory has its own node_modules (a TypeScript service's `--import tsx` resolves from the cwd).
  symlinkSync(join(repoRoot, 'node_modules'), join(release, 'node_modules'));
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_NEXT_COMMAND: JSON.stringify({ cwd: release }) });
  await g.ready(0);
  const { newPid } = await upgradeBySignal(g, 0);
  const second = await g.ready(1);
  t.is(second.pid, newPid);
  t.is(second.cwd, release);

  const bad = startGenerations(t, 'line-service.ts', { FIXTURE_NEXT_COMMAND: JSON.stringify({ file: '/nonexistent/node' }) });
  const port = (await bad.ready(0)).port as number;
  t.regex(await lineRequest({ port }, 'upgrade', 10_000), /^error ERR_ECDYSIS_SPAWN_FAILED$/);
  t.regex((await bad.event(0, 'child-failed')).message as string, /could not start "\/nonexistent\/node".*ENOENT/);
  t.regex(await lineRequest({ port }, 'ping'), /^pong 0 /);
});

test('a new generation that stops itself before ready() leaves the shared sockets exactly as they were', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const path = join(dir, 'svc.sock');
  const kept = join(dir, 'kept.sock');
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_UNIX: path, FIXTURE_UNIX_KEPT: kept, FIXTURE_FAIL: '1.1:stop', FIXTURE_STATE_DIR: dir });
  const first = await g.ready(0);
  const port = first.port as number;
  process.kill(first.pid, 'SIGHUP');
  const failed = await g.event(0, 'child-failed');
  t.is(failed.code, 'ERR_ECDYSIS_CHILD_EXITED');
  // New connections are accepted: a SYN filter left on the socket would drop every SYN
  // (and its retransmits at 1 s and 3 s) and time this out; the path is still there.
  t.is(await lineRequest({ port }, 'ping', 3_500), `pong 0 ${first.pid}`);
  t.is(await lineRequest({ path }, 'ping'), `pong 0 ${first.pid}`);
  t.is(await lineRequest({ path: kept }, 'ping'), `pong 0 ${first.pid}`, 'a stopOnShutdown: false listener too');
  const { newPid } = await upgradeBySignal(g, 0);
  t.is(await lineRequest({ port }, 'ping', 3_500), `pong 1 ${newPid}`);
});

test('a stop that lands while the parent answers ready: the hand-over completes, then the new generation stops the service gracefully', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-test-'));
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_FAIL: '1.1:ready-stop', FIXTURE_STATE_DIR: dir });
  const first = await g.ready(0);
  process.kill(first.pid, 'SIGHUP');
  const outcome = await g.waitFor((r) => r.type === 'ready-outcome' && r.gen === 1);
  t.is(outcome.outcome, 'ready');
  t.like(await g.waitFor((r) => r.type === 'exiting' && r.gen === 0), { mode: 'upgrade' });
  t.like(await g.waitFor((r) => r.type === 'exiting' && r.gen === 1), { mode: 'stop' });
  await waitUntil(() => !isAlive(first.pid) && !isAlive(outcome.pid), 10_000, 'both generations gone');
  t.false(g.records.some((r) => r.event === 'child-failed'));
});
