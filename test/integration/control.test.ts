/**
 * The control socket and the `ecdysis` CLI, with real generations: upgrades
 * that report their outcome, refusals with their codes, hostile clients, a stop
 * that waits for the end, and `ecdysis run` as a supervisor.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HttpLoad, totalFailures } from '../../examples/lib/http-load.ts';
import { cli, startCli, rawExchange } from '../helpers/cli.ts';
import { childrenOf, isAlive, startGenerations, waitUntil, zombieChildren } from '../helpers/generations.ts';
import { processState, statFields } from '../../examples/lib/processes.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-control-'));

test('ecdysis upgrade --socket: 10 upgrades under HTTP load, each exits 0 naming the new pid; 0 failed requests; the socket is 0600 and the same file throughout', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control });
  const port = (await g.ready(0)).port as number;
  t.is(statSync(control).mode & 0o777, 0o600);
  const inode = statSync(control).ino;
  const load = new HttpLoad({ port, keepAliveClients: 4, freshClients: 2, durationMs: 120_000, samples: false }).start();
  for (let gen = 0; gen < 10; gen++) {
    if (gen > 0) await g.event(gen, 'parent-exited');
    const result = await cli(['upgrade', '--socket', control]);
    t.is(result.code, 0, result.stderr);
    const next = await g.ready(gen + 1);
    t.is(result.stdout.trim().replace(/ in \d+ ms$/, ''), `upgraded: pid ${next.pid} (generation ${gen + 1})`);
  }
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.is(statSync(control).ino, inode, 'never unlinked on an upgrade');
  const status = JSON.parse((await cli(['status', '--socket', control, '--json'])).stdout) as Record<string, unknown>;
  t.like(status, { ok: true, protocol: 1, generation: 10, state: 'ready' });
  t.deepEqual((status.listeners as { kind: string }[]).map((l) => l.kind), ['tcp']);
});

test('an application that calls process.exit() right after its drain: every upgrade through the control socket is answered (5 in 5)', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'exit-after-drain.ts', { FIXTURE_CONTROL: control });
  await g.ready(0);
  for (let gen = 0; gen < 5; gen++) {
    // The previous generation exits at once after its drain; the next upgrade may be refused until it has.
    if (gen > 0) {
      const previous = g.records.find((r) => r.type === 'ready' && r.gen === gen - 1)!.pid as number;
      await waitUntil(() => !isAlive(previous), 30_000, `generation ${gen - 1} (pid ${previous}) exited`);
    }
    // A raw client, so that nothing but the library's own answer counts.
    const answer = await rawExchange(control, 'upgrade\n');
    const next = await g.ready(gen + 1);
    t.is(answer.length, 1, `upgrade ${gen + 1}: the connection closed without an answer`);
    t.like(JSON.parse(answer[0] ?? '{}'), { ok: true, pid: next.pid, generation: gen + 1 });
  }
});

test('ecdysis upgrade --socket against a service that calls process.exit(0) the moment its drain is done: 10 upgrades, each exit 0 naming the new pid', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_EXIT_AFTER_DRAIN: '1' });
  await g.ready(0);
  let confirmed = 0;
  for (let gen = 0; gen < 10; gen++) {
    if (gen > 0) await g.event(gen, 'parent-exited');
    const result = await cli(['upgrade', '--socket', control]);
    t.is(result.code, 0, result.stderr);
    const next = await g.ready(gen + 1);
    t.is(result.stdout.trim().replace(/ in \d+ ms$/, ''), `upgraded: pid ${next.pid} (generation ${gen + 1})`);
    // The old generation may exit before its answer is written: the CLI then asks the next one.
    if (result.stderr.includes('closed the connection without answering the upgrade')) confirmed++;
  }
  t.log(`${confirmed} of 10 upgrades were confirmed by status after the old generation left without answering`);
});

test('failed upgrades through the CLI: exit 1 naming the code; an upgrade during an upgrade: exit 1 with ERR_ECDYSIS_UPGRADE_IN_PROGRESS; the old generation serves on', async (t) => {
  const dir = tempDir();
  const control = join(dir, 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_FAIL: '1.1:exit,1.2:hang', FIXTURE_STATE_DIR: dir, FIXTURE_UPGRADE_TIMEOUT: '6000' });
  const first = await g.ready(0);
  const crashed = await cli(['upgrade', '--socket', control]);
  t.is(crashed.code, 1);
  t.regex(crashed.stderr, /^upgrade failed: ERR_ECDYSIS_CHILD_EXITED: generation 1 \(pid \d+\) exited before it was ready \(code 3\)/);
  const hanging = cli(['upgrade', '--socket', control]);
  await g.waitFor((r) => r.type === 'event' && r.event === 'child-spawned' && g.records.filter((x) => x.event === 'child-spawned').length === 2);
  const during = await cli(['upgrade', '--socket', control]);
  t.is(during.code, 1);
  t.regex(during.stderr, /ERR_ECDYSIS_UPGRADE_IN_PROGRESS/);
  const timedOut = await hanging;
  t.is(timedOut.code, 1);
  t.regex(timedOut.stderr, /ERR_ECDYSIS_CHILD_TIMEOUT/);
  const status = JSON.parse((await cli(['status', '--socket', control, '--json'])).stdout) as Record<string, unknown>;
  t.like(status, { pid: first.pid, generation: 0, state: 'ready' });
  t.like(await cli(['upgrade', '--socket', join(dir, 'nope.sock')]), { code: 2 });
  t.like(await cli(['upgrade']), { code: 2 });
  t.like(await cli(['frobnicate', '--socket', control]), { code: 2 });
});

test('hostile clients: another uid is refused and reported; garbage, a 10 MB line and 1,000 connections at once never stop serving or the next upgrade', async (t) => {
  const dir = tempDir();
  chmodSync(dir, 0o755); // so that another user can reach the socket, and be refused by it
  const control = join(dir, 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_CONTROL_MODE: String(0o666) });
  const first = await g.ready(0);
  const port = first.port as number;
  // As nobody: the mode lets it connect; SO_PEERCRED refuses it.
  const asNobody = await cli(['status', '--socket', control, '--json'], { prefix: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
  t.is(asNobody.code, 1, asNobody.stderr);
  t.regex(asNobody.stderr, /ERR_ECDYSIS_CONTROL_DENIED: uid 65534 may not use this control socket/);
  t.like(await g.event(0, 'control-refused'), { uid: 65534 });

  const [garbage] = await rawExchange(control, 'reticulate splines\n');
  t.like(JSON.parse(garbage!), { ok: false, code: 'ERR_ECDYSIS_CONTROL' });
  const [tooLong] = await rawExchange(control, Buffer.alloc(10 * 1024 * 1024, 'x'));
  t.like(JSON.parse(tooLong!), { ok: false, code: 'ERR_ECDYSIS_CONTROL', message: 'a line longer than 4096 bytes' });
  const two = await rawExchange(control, 'status\nstatus\n', 2);
  t.is(two.length, 2, 'several commands on one connection, answered in order');

  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  const crowd = await Promise.all(
    Array.from({ length: 1000 }, () =>
      new Promise<void>((resolve) => {
        const socket = connect(control);
        socket.on('connect', () => setTimeout(() => socket.destroy(), 50));
        socket.on('error', () => resolve());
        socket.on('close', () => resolve());
      }),
    ),
  );
  t.is(crowd.length, 1000);
  const upgraded = await cli(['upgrade', '--socket', control]);
  t.is(upgraded.code, 0, upgraded.stderr);
  // A client that asks for an upgrade and goes away at once cancels nothing.
  await g.event(1, 'parent-exited');
  const hasty = connect(control);
  hasty.on('error', () => {});
  hasty.on('connect', () => hasty.end('upgrade\n', () => hasty.destroy()));
  const second = await g.ready(2);
  t.true(isAlive(second.pid));
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
});

test('ecdysis stop --wait returns only once the service process is gone, after its drain', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control });
  const first = await g.ready(0);
  const slow = fetch(`http://127.0.0.1:${first.port}/slow?ms=1500`).then(async (r) => ({ status: r.status, body: await r.text() }));
  await new Promise((r) => setTimeout(r, 200));
  const stopped = await cli(['stop', '--socket', control, '--wait']);
  t.is(stopped.code, 0, stopped.stderr);
  t.is(stopped.stdout.trim(), `stopped: pid ${first.pid} has exited`);
  t.false(isAlive(first.pid));
  t.true(g.records.some((r) => r.type === 'drained' && r.gen === 0), 'the drain had finished');
  t.deepEqual(await slow, { status: 200, body: 'slow done\n' });
});

test("ecdysis run: a service whose main thread has ended while another still runs is not gone yet: its status is the one it exits with", async (t) => {
  // The leader of a multi-threaded process is a zombie while its other threads
  // run on (Node's are, for a moment, at every exit); its status exists only
  // once the last thread ends. Here the main thread ends at once (exit(2), not
  // exit_group) and another thread exits the process with 7 after 1.5 s.
  const script = [
    'import ctypes, os, platform, threading, time',
    'def later():',
    '    time.sleep(1.5)',
    '    os._exit(7)',
    'threading.Thread(target=later).start()',
    "ctypes.CDLL(None, use_errno=True).syscall({'x86_64': 60, 'aarch64': 93}[platform.machine()], 0)",
  ].join('\n');
  const run = startCli(['run', '--', 'python3', '-c', script]);
  t.teardown(() => {
    if (run.exitCode === null) run.kill('SIGKILL');
  });
  const [code] = await new Promise<[number | null, string | null]>((resolve) => run.once('exit', (c, s) => resolve([c, s])));
  t.is(code, 7);
});

test('ecdysis run: stays the same process through 10 upgrades, forwards SIGTERM, exits with the service status, never leaves a zombie', async (t) => {
  const dir = tempDir();
  const control = join(dir, 'control.sock');
  const { fixtureCommand } = await import('../helpers/generations.ts');
  const run = startCli(['run', '--', process.execPath, ...fixtureCommand('http-service.ts')], { FIXTURE_CONTROL: control });
  t.teardown(() => {
    for (const pid of [run.pid!, ...childrenOf([run.pid!])]) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
  });
  let output = '';
  let errors = '';
  run.stdout.setEncoding('utf8').on('data', (c: string) => (output += c));
  run.stderr.setEncoding('utf8').on('data', (c: string) => (errors += c));
  const records = () => output.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { type: string; event?: string; gen: number; pid: number });
  // Every zombie seen under ecdysis run: a child is one until its parent reaps it, for a moment, or
  // longer on a loaded machine (CI saw one in two polls 100 ms apart); what matters is that each is reaped.
  const zombies = new Set<number>();
  const watch = setInterval(() => {
    for (const pid of [run.pid!, ...childrenOf([run.pid!])]) for (const zombie of zombieChildren(pid)) zombies.add(zombie);
  }, 100);
  const unreaped = () => [...zombies].filter((pid) => processState(pid) === 'Z');
  const allReaped = async (when: string) => {
    await waitUntil(() => unreaped().length === 0, 10_000, `every zombie reaped ${when}`).catch(() => {});
    t.deepEqual(unreaped(), [], `every zombie seen (${[...zombies].join(', ') || 'none'}) reaped ${when}`);
  };
  t.teardown(() => clearInterval(watch));
  await waitUntil(() => records().some((r) => r.type === 'ready' && r.gen === 0), 30_000, 'generation 0 ready');
  for (let gen = 0; gen < 10; gen++) {
    if (gen > 0) await waitUntil(() => records().some((r) => r.event === 'parent-exited' && r.gen === gen), 30_000, `generation ${gen - 1} gone`);
    const result = await cli(['upgrade', '--socket', control]);
    t.is(result.code, 0, result.stderr);
  }
  await waitUntil(() => records().some((r) => r.event === 'parent-exited' && r.gen === 10), 30_000, 'generation 9 gone');
  const last = records().find((r) => r.type === 'ready' && r.gen === 10)!;
  // Generation 9 is gone for generation 10 a moment before ecdysis run has reaped it.
  await waitUntil(() => childrenOf([run.pid!]).length === 1, 10_000, 'ecdysis run reaped generation 9');
  t.deepEqual(childrenOf([run.pid!]), [last.pid], 'only the serving generation is left, a child of ecdysis run');
  t.is(Number(statFields(last.pid)![1]), run.pid!, 'orphaned generations were re-parented to ecdysis run');
  await allReaped('while ecdysis run serves');
  const exited = new Promise<[number | null, string | null]>((resolve) => run.once('exit', (code, signal) => resolve([code, signal])));
  const runPid = run.pid!;
  process.kill(runPid, 'SIGTERM');
  t.deepEqual(await exited, [0, null], `the service stopped gracefully: status 0; ecdysis run said: ${errors.slice(-2000)}; last records: ${records().slice(-6).map((r) => JSON.stringify(r)).join(' ')}`);
  t.false(isAlive(last.pid));
  await allReaped('once ecdysis run exited');
  writeFileSync(join(dir, 'done'), '');
});

test('back-to-back deploys: ecdysis upgrade returns once the new generation is ready (the old one still draining), and the next one waits for that drain, then upgrades (exit 0)', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control });
  const { port, pid: first } = await g.ready(0);
  // A request that holds generation 0 in its drain until the client gives up on it.
  const abort = new AbortController();
  const held = fetch(`http://127.0.0.1:${port}/slow?ms=120000`, { signal: abort.signal }).catch((err: Error) => err.name);
  // Accepted by generation 0 (its status counts the connection) before the upgrade is asked for.
  for (let connections = 0; connections === 0; ) {
    const [line] = await rawExchange(control, 'status\n');
    connections = (JSON.parse(line!) as { listeners: { connections: number }[] }).listeners.reduce((n, l) => n + l.connections, 0);
  }
  const one = await cli(['upgrade', '--socket', control, '--timeout', '60000']);
  t.is(one.code, 0, one.stderr);
  t.true(isAlive(first), 'the first upgrade returned while generation 0 still drains');
  const second = startCli(['upgrade', '--socket', control, '--timeout', '60000']);
  let stderr = '';
  let stdout = '';
  second.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const waiting = new Promise<void>((resolve) => second.stderr.setEncoding('utf8').on('data', (d: string) => ((stderr += d), stderr.includes('waiting:') && resolve())));
  await waiting;
  t.regex(stderr, /waiting: generation 1 cannot upgrade while generation 0 \(pid \d+\) is still running/);
  abort.abort(); // generation 0's last connection ends: its drain is over
  // 'close', not 'exit': its stdout may not have been read to its end when it exits.
  const code = await new Promise<number | null>((resolve) => second.on('close', resolve));
  t.is(code, 0, stderr);
  t.regex(stdout, /^upgraded: pid \d+ \(generation 2\)/);
  t.is(await held, 'AbortError');
  await g.ready(2);
});
