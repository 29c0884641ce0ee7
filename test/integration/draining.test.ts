/**
 * maxDrainingGenerations: upgrades while older generations still drain
 * (WebSocket subscriptions that hold a generation until its drain deadline).
 * Real generations of test/fixtures/ws-hold-service.ts, clients in a separate
 * process (test/fixtures/ws-holder.ts) that hold their connections and never
 * reconnect.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test from 'ava';
import { onLines } from '../../examples/lib/lines.ts';
import { cli } from '../helpers/cli.ts';
import { fixtureCommand, isAlive, socketInodes, startGenerations, waitUntil, type Generations, type Record_ } from '../helpers/generations.ts';

interface HolderRecord {
  type: string;
  id?: number;
  gen?: number;
  code?: number;
  ticks?: number;
  message?: string;
}

/** The holding clients, in their own process. */
function startHolder(t: { teardown(fn: () => void): void }) {
  const child = spawn(process.execPath, fixtureCommand('ws-holder.ts'), { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  const records: HolderRecord[] = [];
  const waiters: { predicate: (r: HolderRecord) => boolean; resolve: (r: HolderRecord) => void }[] = [];
  onLines(child.stdout!, (line) => {
    const record = JSON.parse(line) as HolderRecord;
    records.push(record);
    for (const w of [...waiters]) if (w.predicate(record)) (waiters.splice(waiters.indexOf(w), 1), w.resolve(record));
  });
  const waitFor = (predicate: (r: HolderRecord) => boolean, what: string) => {
    const found = records.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise<HolderRecord>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`ws-holder: timed out waiting for ${what}; records: ${JSON.stringify(records.slice(-10))}`)), 60_000);
      waiters.push({ predicate, resolve: (r) => (clearTimeout(timer), resolve(r)) });
    });
  };
  let opens = 0;
  return {
    records,
    waitFor,
    /** Open one connection and wait until the generation behind it answered. */
    async open(port: number): Promise<HolderRecord> {
      const id = opens++;
      child.stdin!.write(`open ${port}\n`);
      return waitFor((r) => (r.type === 'opened' || r.type === 'closed') && r.id === id, `connection ${id}`);
    },
    close: () => child.stdin!.write('close\n'),
  };
}

/** Each generation's draining interval: from its exit (after commit) to its drained event, by the generations' own clocks. */
function drainingIntervals(g: Generations): Map<number, { start: number; end: number | undefined }> {
  const intervals = new Map<number, { start: number; end: number | undefined }>();
  for (const r of g.records) {
    if (r.type === 'time' && r.event === 'exiting') intervals.set(r.gen, { start: r.time as number, end: undefined });
    if (r.type === 'time' && r.event === 'drained') intervals.get(r.gen)!.end = r.time as number;
  }
  return intervals;
}

test('maxDrainingGenerations 3, 30 s WebSocket drains: 5 upgrades 2 s apart all succeed, at most 3 generations drain at once, the oldest told to finish, none outlives its deadline', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-draining-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pidFile = join(dir, 'app.pid');
  const control = join(dir, 'control.sock');
  const g = startGenerations(t, 'ws-hold-service.ts', { FIXTURE_MAX_DRAINING: '3', FIXTURE_DRAIN_TIMEOUT: '30000', FIXTURE_PID_FILE: pidFile, FIXTURE_CONTROL: control });
  const holder = startHolder(t);
  await holder.waitFor((r) => r.type === 'started', 'the holder');
  const port = (await g.ready(0)).port as number;
  t.is((await holder.open(port)).gen, 0);
  const pids = [(await g.ready(0)).pid];
  for (let gen = 0; gen < 5; gen++) {
    if (gen > 0) await sleep(2_000); // the scenario: deploys 2 s apart, whatever the drains
    const since = g.records.length;
    process.kill(pids[gen]!, 'SIGHUP');
    const outcome = await g.waitFor((r) => r.gen === gen && (r.event === 'child-ready' || r.event === 'child-failed' || r.event === 'refused') && g.records.indexOf(r) >= since, 60_000, `upgrade of generation ${gen}`);
    t.is(outcome.event, 'child-ready', JSON.stringify(outcome));
    const next = await g.ready(gen + 1);
    pids.push(next.pid);
    t.is(readFileSync(pidFile, 'utf8').trim(), String(next.pid), 'the PID file names the serving generation');
    const status = await cli(['status', '--socket', control, '--json']);
    t.like(JSON.parse(status.stdout), { pid: next.pid, generation: gen + 1, state: 'ready' }, 'ecdysis status names the serving generation');
    // Every generation holds a subscription through its drain.
    t.is((await holder.open(port)).gen, gen + 1);
  }

  // Generations 0 and 1 were told to finish by 3 and 4; 2, 3 and 4 drain until their deadline.
  const retired = g.records.filter((r) => r.type === 'event' && r.event === 'ancestor-retired');
  t.deepEqual(retired.map((r) => [r.gen, r.ancestorGeneration, r.ancestorPid, r.drained]), [
    [3, 0, pids[0], true],
    [4, 1, pids[1], true],
  ]);
  t.deepEqual(g.records.filter((r) => r.type === 'event' && r.event === 'retire-requested').map((r) => [r.gen, r.requestedBy]), [
    [0, pids[3]],
    [1, pids[4]],
  ]);
  for (const gen of [2, 3, 4]) await g.waitFor((r) => r.type === 'drained' && r.gen === gen, 60_000, `generation ${gen} drained`);
  for (const pid of pids.slice(0, 5)) await waitUntil(() => !isAlive(pid), 10_000, `pid ${pid} exited`);
  t.true(isAlive(pids[5]!), 'the last generation serves');

  const intervals = drainingIntervals(g);
  t.deepEqual([...intervals.keys()].sort(), [0, 1, 2, 3, 4]);
  // At the start of each drain (the only moments the count can grow), count those still draining.
  for (const [gen, { start }] of intervals) {
    const draining = [...intervals.values()].filter((i) => i.start <= start && (i.end === undefined || i.end > start)).length;
    t.true(draining <= 3, `${draining} generations draining when generation ${gen} began to`);
  }
  const drains = new Map(g.records.filter((r): r is Record_ & { result: { elapsedMs: number; timedOut: boolean; destroyed: number } } => r.type === 'drained').map((r) => [r.gen, r.result]));
  for (const gen of [0, 1]) {
    // Told to finish: its drain ended before its own 30 s deadline, and after it was told (by its own clock).
    t.true(drains.get(gen)!.timedOut && drains.get(gen)!.elapsedMs < 30_000, `generation ${gen} finished before its deadline: ${JSON.stringify(drains.get(gen))}`);
    const told = g.records.find((r) => r.type === 'time' && r.event === 'retire-requested' && r.gen === gen)!;
    t.true(intervals.get(gen)!.end! >= (told.time as number), `generation ${gen} drained after it was told to finish`);
  }
  t.log(`told to finish: ${retired.map((r) => `generation ${r.ancestorGeneration} by ${r.gen}, drained in ${Math.round(r.elapsedMs as number)} ms`).join('; ')}`);
  t.log(`drains (ms): ${[...intervals].map(([gen, i]) => `${gen}: ${i.end! - i.start}`).join(', ')}`);
  for (const gen of [2, 3, 4]) {
    const { start, end } = intervals.get(gen)!;
    t.true(end! - start <= 31_000, `generation ${gen} drained ${end! - start} ms after it stopped accepting (deadline 30000)`);
    t.like(drains.get(gen), { timedOut: true, destroyed: 1 });
  }
  // Each subscription lasted as long as its generation: cut (1006) at the drain's end, never earlier.
  const closes = holder.records.filter((r) => r.type === 'closed');
  t.deepEqual(closes.map((r) => [r.gen, r.code]).sort(), [0, 1, 2, 3, 4].map((gen) => [gen, 1006]));
  t.deepEqual(holder.records.filter((r) => r.type === 'error' && !/1006|socket hang up|ECONNRESET/.test(r.message ?? '')), []);

  // The last generation stops as a service does: its client closes, it drains at once.
  holder.close();
  await holder.waitFor((r) => r.type === 'closed' && r.gen === 5, 'the last connection closed');
  process.kill(pids[5]!, 'SIGTERM');
  await g.waitFor((r) => r.type === 'drained' && r.gen === 5, 30_000, 'generation 5 drained');
  await waitUntil(() => !isAlive(pids[5]!), 10_000, 'the last generation exited');
});

test('maxDrainingGenerations 1 (the default): a generation whose parent drains refuses to upgrade, and upgrades once it is gone', async (t) => {
  const g = startGenerations(t, 'ws-hold-service.ts', { FIXTURE_DRAIN_TIMEOUT: '4000' });
  const holder = startHolder(t);
  await holder.waitFor((r) => r.type === 'started', 'the holder');
  const { port, pid } = await g.ready(0);
  await holder.open(port as number);
  process.kill(pid, 'SIGHUP');
  const next = await g.ready(1);
  process.kill(next.pid, 'SIGHUP');
  const refused = await g.waitFor((r) => r.gen === 1 && r.event === 'refused', 30_000, 'the refusal');
  t.is(refused.code, 'ERR_ECDYSIS_PARENT_ALIVE');
  t.true(isAlive(pid), 'the parent still drains');
  await g.event(1, 'parent-exited');
  process.kill(next.pid, 'SIGHUP');
  await g.ready(2);
  t.is(g.records.filter((r) => r.event === 'retire-requested' || r.event === 'ancestor-retired').length, 0);
});

/** The retire endpoint a process listens on (as root: its socket inodes, matched in /proc/net/unix). */
function retireEndpointOf(pid: number): string | undefined {
  const inodes = new Set(socketInodes(pid));
  for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n')) {
    const cols = line.trim().split(/\s+/);
    const name = /^@(ecdysis-retire-[0-9a-f]{32})@*$/.exec(cols[7] ?? '')?.[1];
    if (name && inodes.has(Number(cols[6]))) return name;
  }
  return undefined;
}

test('RETIRE-SQUAT: a uid-65534 squatter binds each drained generation\'s retire endpoint name (read in /proc/net/unix) through 6 upgrades with maxDrainingGenerations 3: every upgrade succeeds, no commit waits on it, not a byte (no finish) goes to it', async (t) => {
  const g = startGenerations(t, 'ws-hold-service.ts', { FIXTURE_MAX_DRAINING: '3', FIXTURE_DRAIN_TIMEOUT: '30000' });
  // It squats every retire endpoint name that disappears, this test's or not (other tests run meanwhile).
  const squatter = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...fixtureCommand('retire-peer.ts'), 'watch'], { stdio: ['pipe', 'pipe', 'inherit'] });
  t.teardown(() => squatter.kill('SIGKILL'));
  const taken: { type: string; name?: string; heard?: string }[] = [];
  onLines(squatter.stdout!, (line) => taken.push(JSON.parse(line) as (typeof taken)[number]));
  const squatterUntil = (check: () => boolean, what: string) => waitUntil(check, 60_000, `the squatter: ${what}; its records: ${JSON.stringify(taken.slice(-5))}`);
  await squatterUntil(() => taken.some((r) => r.type === 'watching'), 'watching');
  const names: string[] = [];
  let pid = (await g.ready(0)).pid;
  for (let gen = 0; gen < 6; gen++) {
    const since = g.records.length;
    process.kill(pid, 'SIGHUP');
    // The endpoint opens before the child is spawned, and lives until this generation is drained.
    await g.waitFor((r) => r.gen === gen && r.event === 'child-spawned' && g.records.indexOf(r) >= since, 60_000, `generation ${gen + 1} spawned`);
    const name = retireEndpointOf(pid);
    t.truthy(name, `generation ${gen}'s retire endpoint`);
    names.push(name!);
    const outcome = await g.waitFor((r) => r.gen === gen && (r.event === 'child-ready' || r.event === 'child-failed' || r.event === 'refused') && g.records.indexOf(r) >= since, 60_000, `upgrade of generation ${gen}`);
    t.is(outcome.event, 'child-ready', JSON.stringify(outcome));
    pid = (await g.ready(gen + 1)).pid;
    // Nothing holds it: the old generation drains at once, its endpoint closes, and the squatter takes the name before the next upgrade asks it.
    await g.waitFor((r) => r.type === 'drained' && r.gen === gen, 30_000, `generation ${gen} drained`);
    await squatterUntil(() => taken.some((r) => r.type === 'bound' && r.name === name), `generation ${gen}'s name taken`);
  }
  t.deepEqual(g.records.filter((r) => r.type === 'event' && r.event === 'ancestor-retired'), [], 'no generation waited on (or told to finish) a squatted name');
  const spokenTo = taken.filter((r) => r.type === 'connection' && names.includes(r.name!));
  t.deepEqual(spokenTo.filter((r) => r.heard !== ''), [], 'the squatter was sent nothing');
  t.log(`names squatted: ${names.length}; connections to them (closed unspoken): ${spokenTo.length}`);
});
