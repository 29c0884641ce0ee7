/**
 * What an operator does beyond upgrade and stop: roll a bad new version back
 * to the generation before it (while that one still runs), change the next
 * generation's environment, and let upgrades be triggered by memory or time.
 * Real generations, the real CLI, load from clients that never retry.
 */
import test from 'ava';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HttpLoad, totalFailures } from '../../examples/lib/http-load.ts';
import { cli, rawExchange } from '../helpers/cli.ts';
import { isAlive, startGenerations, waitUntil } from '../helpers/generations.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-ops-'));

test('rollback: 10 rounds of an upgrade then `ecdysis rollback` under load: 0 failed requests; the PID file and status name the generation that serves after each step', async (t) => {
  const dir = tempDir();
  const control = join(dir, 'control.sock');
  const pidFile = join(dir, 'app.pid');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_PID_FILE: pidFile, FIXTURE_PROBATION: 'default' });
  const first = await g.ready(0);
  const load = new HttpLoad({ port: first.port as number, keepAliveClients: 3, freshClients: 2, durationMs: 240_000, samples: false }).start();
  t.teardown(() => load.stop());
  const status = async () => JSON.parse((await cli(['status', '--socket', control, '--json'])).stdout) as Record<string, unknown>;
  for (let round = 0; round < 10; round++) {
    const since = g.records.length;
    const upgraded = await cli(['upgrade', '--socket', control]);
    t.is(upgraded.code, 0, upgraded.stderr);
    const child = await g.waitFor((r) => r.type === 'ready' && r.gen === 1 && g.records.indexOf(r) >= since);
    await waitUntil(() => readFileSync(pidFile, 'utf8') === `${child.pid}\n`, 10_000, 'the PID file names the new generation');
    t.like(await status(), { pid: child.pid, generation: 1 });

    const rolled = await cli(['rollback', '--socket', control]);
    t.is(rolled.code, 0, rolled.stderr);
    t.is(rolled.stdout.trim(), `rolled back: pid ${first.pid} (generation 0) serves`);
    await g.waitFor((r) => r.type === 'event' && r.event === 'successor-rolled-back' && r.childPid === child.pid);
    await waitUntil(() => readFileSync(pidFile, 'utf8') === `${first.pid}\n`, 10_000, 'the PID file names generation 0 again');
    // The new generation leaves: it drains and exits; nothing else answers the control socket.
    const exiting = await g.waitFor((r) => r.type === 'exiting' && r.pid === child.pid);
    t.is(exiting.mode, 'rollback');
    await waitUntil(() => !isAlive(child.pid), 30_000, `generation 1 (pid ${child.pid}) exited`);
    t.like(await status(), { pid: first.pid, generation: 0, state: 'ready' });
  }
  const report = await load.stop();
  t.log(`${report.ok} requests ok through 10 upgrades and 10 rollbacks`);
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  const metrics = (await status()).metrics as { upgrades: Record<string, number> };
  t.is(metrics.upgrades.rolled_back, 10, JSON.stringify(metrics));
});

test('rollback once the previous generation has exited: exit 1 with ERR_ECDYSIS_ROLLBACK_UNAVAILABLE, the new generation serves on', async (t) => {
  const control = join(tempDir(), 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control });
  const first = await g.ready(0);
  t.is((await cli(['upgrade', '--socket', control])).code, 0);
  const second = await g.ready(1);
  await g.event(1, 'parent-exited');
  const rolled = await cli(['rollback', '--socket', control]);
  t.is(rolled.code, 1);
  t.regex(rolled.stderr, /^rollback failed: ERR_ECDYSIS_ROLLBACK_UNAVAILABLE: generation 1 cannot roll back: generation 0 \(pid \d+\) has exited/);
  t.false(isAlive(first.pid));
  t.is(await (await fetch(`http://127.0.0.1:${second.port as number}/`)).text(), 'hello 1\n');
  // Generation 0 has nothing before it.
  const otherControl = join(tempDir(), 'control.sock');
  const g0 = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: otherControl });
  await g0.ready(0);
  const none = await cli(['rollback', '--socket', otherControl]);
  t.is(none.code, 1);
  t.regex(none.stderr, /ERR_ECDYSIS_ROLLBACK_UNAVAILABLE: generation 0 cannot roll back: it is the first generation/);
});

test('upgrade --env and --env-file: the new generation sees the changed variables, the old one did not; the values are never printed; a peer that is not root nor the service\'s user cannot; 1 MB is refused with a coded error', async (t) => {
  const dir = tempDir();
  chmodSync(dir, 0o755);
  const control = join(dir, 'control.sock');
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_CONTROL: control, FIXTURE_CONTROL_MODE: String(0o666), FIXTURE_CONTROL_ALLOW_UIDS: '65534', FIXTURE_ENV_KEY: 'ROTATED_SECRET' });
  t.is((await g.ready(0)).env, null);
  const file = join(dir, 'release.env');
  writeFileSync(file, '# rotated today\nROTATED_SECRET="s3cr3t-from-file"\nFEATURE_FLAGS=a,b\n');

  // uid 65534 may upgrade (allowUids) but not change the environment.
  const asNobody = await cli(['upgrade', '--socket', control, '--env', 'ROTATED_SECRET=evil', '--server-uid', '0'], { prefix: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] });
  t.is(asNobody.code, 1, asNobody.stderr);
  t.regex(asNobody.stderr, /ERR_ECDYSIS_CONTROL_DENIED: only root and the service's own user may change the next generation's environment/);
  t.false(g.records.some((r) => r.type === 'ready' && r.gen === 1), 'no upgrade happened');

  const upgraded = await cli(['upgrade', '--socket', control, '--env-file', file, '--env', 'ROTATED_SECRET=s3cr3t-from-flag']);
  t.is(upgraded.code, 0, upgraded.stderr);
  t.false(`${upgraded.stdout}${upgraded.stderr}`.includes('s3cr3t'), 'values are not printed');
  t.is((await g.ready(1)).env, 's3cr3t-from-flag', 'the flag wins over the file');
  // The variable stays for the generations after (it is in the new generation's environment).
  await g.event(1, 'parent-exited');
  t.is((await cli(['upgrade', '--socket', control])).code, 0);
  t.is((await g.ready(2)).env, 's3cr3t-from-flag');
  t.false(g.stderr.join('').includes('s3cr3t'), 'nor logged by the service');

  const big = join(dir, 'big.env');
  writeFileSync(big, `BIG=${'x'.repeat(1024 * 1024)}\n`);
  const tooBig = await cli(['upgrade', '--socket', control, '--env-file', big]);
  t.is(tooBig.code, 2);
  t.regex(tooBig.stderr, /ERR_ECDYSIS_INVALID_OPTION: --env-file .* is 1048581 bytes: at most 65536 bytes/);
  // The server keeps its own bounds, whatever the client does.
  const lines = Array.from({ length: 20 }, (_, i) => `env ${JSON.stringify({ [`V${i}`]: 'y'.repeat(4000) })}\n`).join('');
  const answers = await rawExchange(control, lines, 20);
  const last = JSON.parse(answers.at(-1)!) as { ok: boolean; code: string; message: string };
  t.like(last, { ok: false, code: 'ERR_ECDYSIS_CONTROL' });
  t.regex(last.message, /at most 256 variables and 65536 bytes/);
});

test('rssAbove: a service that leaks on purpose is upgraded before its RSS is twice the bound, under load, with no failed request; the reason says rss, in events and metrics', async (t) => {
  const bound = 160 * 1024 * 1024;
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_RSS_ABOVE: String(bound), FIXTURE_LEAK_MB: '2' });
  const first = await g.ready(0);
  const load = new HttpLoad({ port: first.port as number, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  t.teardown(() => load.stop());
  const requested = await g.waitFor((r) => r.type === 'rss-at-request', 60_000, 'the rss-triggered upgrade');
  t.is(requested.reason, 'rss');
  t.log(`requested at RSS ${Math.round((requested.rss as number) / 1048576)} MiB, bound ${bound / 1048576} MiB`);
  t.true((requested.rss as number) > bound && (requested.rss as number) < 2 * bound);
  await g.ready(1);
  await g.event(1, 'parent-drained');
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  t.like(await g.event(0, 'requested'), { reason: 'rss' });
});

test('every: the service upgrades itself on schedule (reason every), each generation in turn', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_EVERY: '1500' });
  await g.ready(0);
  await g.ready(2, 60_000);
  t.like(await g.event(0, 'requested'), { reason: 'every' });
  t.like(await g.event(1, 'requested'), { reason: 'every' });
});
