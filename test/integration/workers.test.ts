/**
 * Worker groups (option `workers`): real primaries and workers of
 * test/fixtures/http-service.ts, upgraded by real signals under real load
 * (examples/lib/http-load.ts: never retries, counts every failure).
 */
import test from 'ava';
import { childrenOf, isAlive, startGenerations, waitUntil, zombieChildren, type Generations, type Record_ } from '../helpers/generations.ts';
import { HttpLoad, totalFailures, type LoadReport } from '../../examples/lib/http-load.ts';

function primary(g: Generations, gen: number): Promise<Record_> {
  return g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.role === 'primary', 60_000, `generation ${gen}'s primary ready`);
}

function workersReady(g: Generations, gen: number, count: number): Promise<Record_[]> {
  return Promise.all(Array.from({ length: count }, (_, index) => g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.worker === index, 60_000, `generation ${gen}'s worker ${index} ready`)));
}

/** SIGHUP generation `gen`'s primary; resolves once gen + 1's group serves and gen's primary and workers have exited. */
async function upgradeGroup(g: Generations, gen: number, count: number): Promise<void> {
  const old = await primary(g, gen);
  const oldWorkers = await workersReady(g, gen, count);
  process.kill(old.pid, 'SIGHUP');
  await primary(g, gen + 1);
  await workersReady(g, gen + 1, count);
  for (const { pid } of [old, ...oldWorkers]) await waitUntil(() => !isAlive(pid), 30_000, `pid ${pid} of generation ${gen} exited`);
}

function describe(report: LoadReport): string {
  return `${report.ok} ok, failures ${JSON.stringify(report.failures)}, workers ${JSON.stringify(report.workers)}; ${report.errors.slice(0, 5).join('; ')}`;
}

test('workers: 2, ten upgrades under keep-alive and new-connection load: 0 failed, both workers of every generation answered', async (t) => {
  const g = startGenerations(t, 'http-service.ts', { FIXTURE_WORKERS: '2' });
  const port = (await primary(g, 0)).port as number;
  await workersReady(g, 0, 2);
  const load = new HttpLoad({ port, keepAliveClients: 4, freshClients: 4, durationMs: 120_000, samples: false }).start();
  for (let gen = 0; gen < 10; gen++) {
    // Each generation serves a moment under both kinds of load.
    const before = load.progress.requests;
    await waitUntil(() => load.progress.requests >= before + 200, 30_000, 'requests served');
    await upgradeGroup(g, gen, 2);
  }
  const before = load.progress.requests;
  await waitUntil(() => load.progress.requests >= before + 200, 30_000, 'requests served');
  const report = await load.stop();
  t.log(describe(report));
  t.is(totalFailures(report), 0, describe(report));
  for (let gen = 0; gen <= 10; gen++) {
    for (const index of [0, 1]) t.true((report.workers?.[`${gen}/${index}`] ?? 0) > 0, `generation ${gen}'s worker ${index} answered: ${JSON.stringify(report.workers)}`);
  }
  // Nothing left behind: no zombie, and only generation 10's primary and its two workers run.
  const last = await primary(g, 10);
  t.deepEqual(zombieChildren(last.pid), []);
  t.is(childrenOf([last.pid]).length, 2);
});
