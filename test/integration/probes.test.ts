/**
 * Behind load balancers and in Kubernetes: the probe listener (/livez, /readyz,
 * /metrics) handed over across upgrades, counters that go on across
 * generations, the lame-duck stop (`stopDelay`) under a harness that probes and
 * routes as the kubelet and a Service's endpoints do, and the probe listener
 * against hostile clients.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../examples/lib/free-port.ts';
import { HttpLoad, totalFailures } from '../../examples/lib/http-load.ts';
import { onLines } from '../../examples/lib/lines.ts';
import { cliPath } from '../helpers/cli.ts';
import { childrenOf, fixtureCommand, isAlive, startGenerations, waitUntil, type Generations } from '../helpers/generations.ts';

interface KubeRecord {
  type: string;
  pod?: string;
  sentAt?: number;
  status?: number;
  error?: string;
  ok?: number;
  failed?: number;
  errors?: Record<string, number>;
  byPod?: Record<string, number>;
}

/** The kubelet and endpoint-controller stand-in (test/fixtures/kube-load.ts), in its own process. */
function kubeLoad(t: ExecutionContext, pods: { name: string; port: number; probePort: number }[], options: { intervalMs: number; clients: number }) {
  const child = spawn(process.execPath, fixtureCommand('kube-load.ts'), {
    env: { ...process.env, PODS: JSON.stringify(pods), PROBE_INTERVAL_MS: String(options.intervalMs), CLIENTS: String(options.clients) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => child.kill('SIGKILL'));
  const records: KubeRecord[] = [];
  onLines(child.stdout!, (line) => records.push(JSON.parse(line) as KubeRecord));
  return {
    records,
    probes: (pod: string) => records.filter((r) => r.type === 'probe' && r.pod === pod),
    async stop(): Promise<KubeRecord> {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
      return records.find((r) => r.type === 'summary')!;
    },
  };
}

async function metrics(probePort: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${probePort}/metrics`)).text();
}

/** The value of one sample of the Prometheus text, e.g. 'ecdysis_upgrades_total{outcome="ok"}'. */
function sample(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('10 upgrades under load: /readyz answers 200 at every probe (every 100 ms); /metrics counts exactly 10 upgrades across the generations, then a failed upgrade and a take-back as such', async (t) => {
  const probePort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-probes-'));
  const g = startGenerations(t, 'http-service.ts', {
    FIXTURE_PROBES_PORT: String(probePort),
    FIXTURE_FAIL: '11.1:exit,11.2:crash-after-ready',
    FIXTURE_STATE_DIR: dir,
    FIXTURE_PROBATION: 'default',
  });
  const port = (await g.ready(0)).port as number;
  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  t.teardown(() => load.stop());
  const prober = kubeLoad(t, [{ name: 'service', port, probePort }], { intervalMs: 100, clients: 0 });
  await waitUntil(() => prober.probes('service').length >= 3, 10_000, 'the first probes');
  for (let gen = 0; gen < 10; gen++) {
    if (gen > 0) await g.event(gen, 'parent-drained');
    process.kill((await g.ready(gen)).pid, 'SIGHUP');
    await g.ready(gen + 1);
  }
  await g.event(10, 'parent-drained');
  const probes = prober.probes('service');
  await prober.stop();
  t.log(`${probes.length} probes of /readyz across 10 upgrades`);
  t.deepEqual(probes.filter((p) => p.status !== 200), [], 'every probe answered 200');
  t.true(probes.length >= 20);

  let text = await metrics(probePort);
  t.is(sample(text, 'ecdysis_generation'), 10);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="ok"}'), 10, text);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="taken_back"}'), 0);
  t.true((sample(text, 'ecdysis_last_upgrade_duration_seconds') ?? 0) > 0);

  // A new generation that exits before ready: counted as failed, by code; generation 10 serves on.
  const serving = await g.ready(10);
  process.kill(serving.pid, 'SIGHUP');
  await g.event(10, 'child-failed');
  text = await metrics(probePort);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="failed",code="ERR_ECDYSIS_CHILD_EXITED"}'), 1, text);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="ok"}'), 10);
  // One that dies after it took over: generation 10 takes the service back and counts it.
  process.kill(serving.pid, 'SIGHUP');
  const tookBack = await g.event(10, 'successor-failed');
  text = await metrics(probePort);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="taken_back"}'), 1, text);
  t.is(sample(text, 'ecdysis_generation'), 10);
  // The next good upgrade goes on from there.
  process.kill(serving.pid, 'SIGHUP');
  const next = await g.waitFor((r) => r.type === 'ready' && r.gen === 11 && r.pid !== tookBack.childPid);
  text = await metrics(probePort);
  t.is(sample(text, 'ecdysis_generation'), 11, `generation 11 (pid ${next.pid}) answers`);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="ok"}'), 11);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="failed",code="ERR_ECDYSIS_CHILD_EXITED"}'), 1);
  t.is(sample(text, 'ecdysis_upgrades_total{outcome="taken_back"}'), 1);
  const report = await load.stop();
  // Requests in flight on the generation that died are lost with it; nothing else.
  t.is(report.failures.refused, 0, report.errors.join('\n'));
});

test('5 upgrades under a probe storm (fresh connections one after another): every /readyz answers 200, the old generation\'s last answers included (regression: a probe accepted just before the commit was answered 503)', async (t) => {
  const probePort = await freePort();
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_PROBES_PORT: String(probePort), FIXTURE_READY_DELAY: '300' });
  await g.ready(0);
  let done = false;
  const answers: { status: number; pid: number; state: string }[] = [];
  const storm = (async () => {
    while (!done) {
      const response = await fetch(`http://127.0.0.1:${probePort}/readyz`, { headers: { connection: 'close' } });
      const body = (await response.json()) as { pid: number; state: string };
      answers.push({ status: response.status, pid: body.pid, state: body.state });
    }
  })();
  for (let gen = 0; gen < 5; gen++) {
    if (gen > 0) await g.event(gen, 'parent-drained');
    process.kill((await g.ready(gen)).pid, 'SIGHUP');
    await g.ready(gen + 1);
  }
  await g.event(5, 'parent-drained');
  done = true;
  await storm;
  const tally = new Map<string, number>();
  for (const a of answers) tally.set(`${a.state} ${a.status}`, (tally.get(`${a.state} ${a.status}`) ?? 0) + 1);
  t.log(`${answers.length} probes across 5 upgrades: ${[...tally].map(([k, n]) => `${k}: ${n}`).join(', ')}`);
  t.true(answers.length >= 100);
  t.deepEqual(answers.filter((a) => a.status !== 200), [], 'every probe answered 200');
});

/** A pod: `ecdysis run -- node http-service.ts`, as PID 1 of a container would run it. */
async function startPod(t: ExecutionContext, name: string, env: Record<string, string>): Promise<{ name: string; port: number; probePort: number; run: ChildProcess }> {
  const port = await freePort();
  const probePort = await freePort();
  const run = spawn(process.execPath, [cliPath, 'run', '--', process.execPath, ...fixtureCommand('http-service.ts')], {
    env: { ...process.env, FIXTURE_PORT: String(port), FIXTURE_PROBES_PORT: String(probePort), ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    for (const pid of childrenOf([run.pid!])) if (isAlive(pid)) process.kill(pid, 'SIGKILL');
    run.kill('SIGKILL');
  });
  const readyAt = new Promise<void>((resolve) => onLines(run.stdout!, (line) => line.includes('"type":"ready"') && resolve()));
  await readyAt;
  return { name, port, probePort, run };
}

/** SIGTERM to the pod's PID 1, then what the kubelet does: wait the grace period, then SIGKILL. Resolves with ms to its exit and whether it was killed. */
async function terminatePod(pod: { run: ChildProcess }, graceMs: number): Promise<{ exitMs: number; killed: boolean }> {
  const sentAt = Date.now();
  const exited = new Promise<void>((resolve) => pod.run.once('exit', () => resolve()));
  pod.run.kill('SIGTERM');
  let killed = false;
  const grace = setTimeout(() => {
    killed = true;
    pod.run.kill('SIGKILL');
  }, graceMs);
  await exited;
  clearTimeout(grace);
  return { exitMs: Date.now() - sentAt, killed };
}

async function podStopped(t: ExecutionContext, stopDelay: number) {
  const a = await startPod(t, 'a', stopDelay ? { FIXTURE_STOP_DELAY: String(stopDelay) } : {});
  const b = await startPod(t, 'b', stopDelay ? { FIXTURE_STOP_DELAY: String(stopDelay) } : {});
  const harness = kubeLoad(t, [a, b], { intervalMs: 1_000, clients: 4 });
  await waitUntil(() => harness.probes('a').some((p) => p.status === 200) && harness.probes('b').some((p) => p.status === 200), 20_000, 'both pods ready');
  const sigtermAt = Date.now();
  const end = await terminatePod(a, 30_000);
  // A little more traffic on the pod that stays.
  const before = harness.probes('b').length;
  await waitUntil(() => harness.probes('b').length >= before + 2, 10_000, 'two more probes');
  const summary = await harness.stop();
  const afterTerm = harness.probes('a').filter((p) => p.sentAt! >= sigtermAt);
  return { end, summary, afterTerm };
}

test('behind a balancer that probes every second: with stopDelay 3 s, readiness fails within one probe of the SIGTERM to ecdysis run, no request fails, and the pod exits long before its grace period; without it, requests fail', async (t) => {
  const lame = await podStopped(t, 3_000);
  t.log(`stopDelay 3 s: exit ${lame.end.exitMs} ms after SIGTERM; ${lame.summary.ok} ok, ${lame.summary.failed} failed; probes of a after SIGTERM: ${lame.afterTerm.map((p) => p.status ?? p.error).join(' ')}`);
  t.is(lame.summary.failed, 0, JSON.stringify(lame.summary.errors));
  t.true(lame.afterTerm.length >= 2);
  t.true(lame.afterTerm.slice(1).every((p) => p.status !== 200), 'not ready from the second probe after the SIGTERM on');
  t.false(lame.end.killed, 'exited by itself');
  t.true(lame.end.exitMs < 15_000, `exited ${lame.end.exitMs} ms after the SIGTERM, grace period 30 s`);
  t.true((lame.summary.byPod?.a ?? 0) > 0 && (lame.summary.byPod?.b ?? 0) > 0);

  const plain = await podStopped(t, 0);
  t.log(`without stopDelay: exit ${plain.end.exitMs} ms after SIGTERM; ${plain.summary.ok} ok, ${plain.summary.failed} failed (${JSON.stringify(plain.summary.errors)})`);
  t.false(plain.end.killed);
});

test('the probe listener against hostile clients (a 1 MB request line, 1,000 idle connections, a slowloris client): the service serves on and upgrades', async (t) => {
  const probePort = await freePort();
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_PROBES_PORT: String(probePort) });
  const port = (await g.ready(0)).port as number;
  const load = new HttpLoad({ port, keepAliveClients: 2, freshClients: 2, durationMs: 120_000, samples: false }).start();
  t.teardown(() => load.stop());
  const attacker = spawn(process.execPath, fixtureCommand('probe-attacker.ts'), { env: { ...process.env, PROBE_PORT: String(probePort) }, stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => attacker.kill('SIGKILL'));
  const said: Record<string, unknown>[] = [];
  onLines(attacker.stdout!, (line) => said.push(JSON.parse(line) as Record<string, unknown>));
  await waitUntil(() => said.some((r) => r.type === 'holding'), 30_000, 'the attacker holds its connections');
  const bigLine = said.find((r) => r.type === 'big-line');
  t.log(`attacker: ${JSON.stringify(said)}`);
  t.true(bigLine !== undefined && (bigLine.status === 431 || bigLine.closed === true), 'a 1 MB request line is refused');
  // While it holds 1,000 idle connections and a slowloris one: an upgrade, and the service serves.
  process.kill((await g.ready(0)).pid, 'SIGHUP');
  await g.ready(1);
  await g.event(1, 'parent-drained');
  attacker.kill('SIGTERM');
  await new Promise((resolve) => attacker.once('exit', resolve));
  const report = await load.stop();
  t.is(totalFailures(report), 0, report.errors.join('\n'));
  // Once it is gone, the probes answer as before.
  t.is((await fetch(`http://127.0.0.1:${probePort}/readyz`)).status, 200);
});

test('/livez and /readyz follow the application\'s checks; /readyz turns 503 during a lame-duck delay; other paths and methods are refused', async (t) => {
  const probePort = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-probes-'));
  const failing = join(dir, 'failing');
  const g: Generations = startGenerations(t, 'http-service.ts', { FIXTURE_PROBES_PORT: String(probePort), FIXTURE_CHECK_FILE: failing, FIXTURE_STOP_DELAY: '60000' });
  const first = await g.ready(0);
  const probe = async (path: string, method = 'GET') => {
    const response = await fetch(`http://127.0.0.1:${probePort}${path}`, { method });
    return { status: response.status, body: await response.text() };
  };
  t.is((await probe('/livez')).status, 200);
  t.like(JSON.parse((await probe('/readyz')).body), { status: 'ok', ready: true, live: true, state: 'ready', generation: 0, checks: { fixture: true } });
  writeFileSync(failing, '');
  t.like(JSON.parse((await probe('/livez')).body), { status: 'unavailable', live: false, checks: { fixture: false } });
  t.is((await probe('/readyz')).status, 503);
  t.is((await probe('/nope')).status, 404);
  t.is((await probe('/readyz', 'POST')).status, 405);
  t.regex((await probe('/metrics')).body, /^# HELP ecdysis_generation /);
  // The lame duck: not ready, still live and serving.
  rmSync(failing);
  process.kill(first.pid, 'SIGTERM');
  await g.event(0, 'lame-duck');
  t.like(JSON.parse((await probe('/readyz')).body), { status: 'unavailable', ready: false, live: true, state: 'lame-duck' });
  t.is(await (await fetch(`http://127.0.0.1:${first.port as number}/`)).text(), 'hello 0\n', 'serving during the delay');
  // A second stop ends the delay at once.
  process.kill(first.pid, 'SIGTERM');
  await g.waitFor((r) => r.type === 'drained' && r.pid === first.pid);
});
