/**
 * Hand-over in worker groups, with real primaries and workers of
 * test/fixtures/worker-handoff-service.ts: at an upgrade old worker i hands its
 * state and live connections to new worker i (the primary its own to the new
 * primary); a smaller new group leaves the extra workers' connections to
 * drain; a failed hand-over gives nothing up.
 */
import test from 'ava';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixtureCommand, isAlive, startGenerations, waitUntil, type Generations, type Record_ } from '../helpers/generations.ts';

const tempDir = () => mkdtempSync(join(tmpdir(), 'ecdysis-whandoff-'));

function primary(g: Generations, gen: number): Promise<Record_> {
  return g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.role === 'primary', 60_000, `generation ${gen}'s primary ready`);
}

function workersReady(g: Generations, gen: number, count: number): Promise<Record_[]> {
  return Promise.all(Array.from({ length: count }, (_, index) => g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.worker === index, 60_000, `generation ${gen}'s worker ${index} ready`)));
}

function inheritedBy(g: Generations, gen: number, worker: number | null): Promise<Record_> {
  return g.waitFor((r) => r.type === 'inherited' && r.gen === gen && (worker === null ? r.role === 'primary' : r.worker === worker), 60_000, `generation ${gen}'s ${worker === null ? 'primary' : `worker ${worker}`} inherited`);
}

interface Answer {
  text: string;
  gen: number;
  index: number;
  pid: number;
  lines: number;
}

/** A client of the line protocol: each line sent is answered by the worker serving the connection. */
class Client {
  readonly socket: Socket;
  readonly answers: Answer[] = [];
  closed = false;
  #buffered = '';
  #waiters: (() => void)[] = [];

  constructor(port: number) {
    this.socket = connect(port, '127.0.0.1');
    this.socket.setEncoding('utf8');
    this.socket.on('error', () => {});
    this.socket.on('close', () => {
      this.closed = true;
      this.#wake();
    });
    this.socket.on('data', (chunk: string) => {
      this.#buffered += chunk;
      let newline: number;
      while ((newline = this.#buffered.indexOf('\n')) !== -1) {
        const [text, gen, index, pid, lines] = this.#buffered.slice(0, newline).split(' ');
        this.#buffered = this.#buffered.slice(newline + 1);
        this.answers.push({ text: text!, gen: Number(gen), index: Number(index), pid: Number(pid), lines: Number(lines) });
      }
      this.#wake();
    });
  }

  /** Send the rest of a line (or a whole one); resolves with its answer. */
  async ask(text: string): Promise<Answer> {
    const before = this.answers.length;
    this.socket.write(`${text}\n`);
    await this.until(() => this.answers.length > before || this.closed, `an answer to "${text}"`);
    if (this.answers.length === before) throw new Error(`the connection closed before "${text}" was answered`);
    return this.answers[before]!;
  }

  /** Begin a line without finishing it: the worker holds it, mid-conversation. */
  begin(text: string): void {
    this.socket.write(text);
  }

  until(condition: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; answers: ${JSON.stringify(this.answers.slice(-3))}`)), timeoutMs);
      const look = () => {
        if (condition()) {
          clearTimeout(timer);
          resolve();
        } else this.#waiters.push(look);
      };
      this.#waiters.push(look);
    });
  }

  #wake(): void {
    for (const waiter of this.#waiters.splice(0)) waiter();
  }
}

/** Clients until each of the `count` workers serves at least one; all kept, by the index serving them. */
async function clientsOnEveryWorker(t: { teardown(fn: () => void): void }, port: number, count: number): Promise<Map<number, Client[]>> {
  const byIndex = new Map<number, Client[]>();
  for (let n = 0; n < 64 && byIndex.size < count; n++) {
    const client = new Client(port);
    t.teardown(() => client.socket.destroy());
    const answer = await client.ask(`hello${n}`);
    byIndex.set(answer.index, [...(byIndex.get(answer.index) ?? []), client]);
  }
  if (byIndex.size < count) throw new Error(`64 connections reached only workers ${[...byIndex.keys()].join(', ')}`);
  return byIndex;
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

test('workers: 2, three upgrades: new worker i gets exactly old worker i\'s state and connections, mid-line, and goes on with them; the primaries\' fds do not grow', async (t) => {
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS: '2' });
  const first = await primary(g, 0);
  const port = first.port as number;
  let workers = await workersReady(g, 0, 2);
  const clients = await clientsOnEveryWorker(t, port, 2);
  const primaryFds = fdCount(first.pid);
  // Who held worker i's state, generation by generation.
  const chains = [0, 1].map((index) => [{ gen: 0, index, pid: workers[index]!.pid }]);
  const primaryChain = [{ gen: 0, index: null, pid: first.pid }];
  for (let gen = 0; gen < 3; gen++) {
    const old = await primary(g, gen);
    for (const [index, list] of clients) list.forEach((client, n) => client.begin(`up${gen}w${index}c${n}-`));
    process.kill(old.pid, 'SIGHUP');
    const next = await primary(g, gen + 1);
    const nextWorkers = await workersReady(g, gen + 1, 2);
    for (const index of [0, 1]) {
      const inherited = await inheritedBy(g, gen + 1, index);
      t.deepEqual((inherited.state as { chain: unknown }).chain, chains[index], `generation ${gen + 1}'s worker ${index} got worker ${index}'s state`);
      t.is((inherited.sockets as string[]).length, clients.get(index)!.length, `and worker ${index}'s connections`);
      chains[index]!.push({ gen: gen + 1, index, pid: nextWorkers[index]!.pid });
    }
    t.deepEqual(((await inheritedBy(g, gen + 1, null)).state as { chain: unknown }).chain, primaryChain, 'the new primary got the old primary\'s state');
    primaryChain.push({ gen: gen + 1, index: null, pid: next.pid });
    for (const { pid } of [old, ...workers]) await waitUntil(() => !isAlive(pid), 30_000, `pid ${pid} of generation ${gen} exited`);
    for (const [index, list] of clients) {
      for (const [n, client] of list.entries()) {
        const before = client.answers.at(-1)!;
        // The line begun with generation gen is finished with gen + 1, on the same connection.
        t.like(await client.ask('rest'), { text: `up${gen}w${index}c${n}-rest`, gen: gen + 1, index, pid: nextWorkers[index]!.pid, lines: before.lines + 1 });
        t.false(client.closed);
      }
    }
    t.true(g.records.filter((r) => r.type === 'handoff-outcome' && r.gen === gen).every((r) => r.outcome === 'committed'));
    // The new primary relayed nothing of its own and holds what the first one held, once its parent is gone.
    await waitUntil(() => fdCount(next.pid) === primaryFds, 10_000, `generation ${gen + 1}'s primary holds ${primaryFds} fds (${fdCount(next.pid)})`);
    workers = nextWorkers;
  }
  t.is(g.records.filter((r) => r.type === 'handoff-outcome' && r.outcome === 'committed' && r.worker !== undefined).length, 6);
});

test('2 → 1 → 2 workers: worker 0 hands over to worker 0; worker 1, without a successor, is told (handoff-skipped) and drains its connection; a new worker 1 starts empty', async (t) => {
  const dir = tempDir();
  const sizeFile = join(dir, 'workers');
  writeFileSync(sizeFile, '2');
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS_FILE: sizeFile, FIXTURE_DRAIN_TIMEOUT: '8000' });
  const first = await primary(g, 0);
  const workers = await workersReady(g, 0, 2);
  const clients = await clientsOnEveryWorker(t, first.port as number, 2);
  for (const list of clients.values()) for (const client of list) client.begin('mid-');
  writeFileSync(sizeFile, '1');
  process.kill(first.pid, 'SIGHUP');
  const skipped = await g.waitFor((r) => r.type === 'event' && r.event === 'handoff-skipped' && r.gen === 0 && r.worker === 1, 30_000, 'worker 1 told its hand-over was skipped');
  t.regex(skipped.reason as string, /no worker of generation 1 took worker 1's hand-over/);
  // Worker 1's connections are still served by it while it drains, then closed.
  for (const client of clients.get(1)!) t.like(await client.ask('rest'), { text: 'mid-rest', gen: 0, index: 1, pid: workers[1]!.pid });
  const [newWorker0] = await workersReady(g, 1, 1);
  const inherited = await inheritedBy(g, 1, 0);
  t.deepEqual((inherited.state as { chain: unknown }).chain, [{ gen: 0, index: 0, pid: workers[0]!.pid }]);
  t.is((inherited.sockets as string[]).length, clients.get(0)!.length);
  t.false(g.records.some((r) => r.type === 'event' && r.event === 'handoff-skipped' && r.worker === 0));
  // Worker 0's connections go on in generation 1.
  for (const client of clients.get(0)!) t.like(await client.ask('rest'), { text: 'mid-rest', gen: 1, index: 0, pid: newWorker0!.pid });
  for (const client of clients.get(1)!) await client.until(() => client.closed, 'the drain of worker 1 closes its connection');
  t.false(g.records.some((r) => r.type === 'handoff-outcome' && r.worker === 1), 'worker 1\'s handler was never called');
  await waitUntil(() => !isAlive(first.pid), 30_000, 'generation 0 exits');

  // And back to 2: worker 0's state goes on, worker 1 starts with nothing handed over.
  writeFileSync(sizeFile, '2');
  const second = await primary(g, 1);
  process.kill(second.pid, 'SIGHUP');
  const nextWorkers = await workersReady(g, 2, 2);
  t.deepEqual(((await inheritedBy(g, 2, 0)).state as { chain: unknown }).chain, [
    { gen: 0, index: 0, pid: workers[0]!.pid },
    { gen: 1, index: 0, pid: newWorker0!.pid },
  ]);
  t.like(await inheritedBy(g, 2, 1), { state: null, sockets: [] });
  for (const client of clients.get(0)!) t.like(await client.ask('again'), { text: 'again', gen: 2, index: 0, pid: nextWorkers[0]!.pid });
});

test('a worker whose onHandoff handler throws: the upgrade fails (ERR_ECDYSIS_HANDOFF, naming why), every old worker keeps its connections and serves on, the primary\'s fds are as before; the next upgrade moves them', async (t) => {
  const dir = tempDir();
  const throwFile = join(dir, 'throw');
  writeFileSync(throwFile, '');
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS: '2', FIXTURE_HANDOFF_THROW_FILE: throwFile, FIXTURE_HANDOFF_THROW_WORKER: '1' });
  const first = await primary(g, 0);
  const workers = await workersReady(g, 0, 2);
  const clients = await clientsOnEveryWorker(t, first.port as number, 2);
  for (const list of clients.values()) for (const client of list) client.begin('kept-');
  const primaryFds = fdCount(first.pid);
  process.kill(first.pid, 'SIGHUP');
  const failed = await g.event(0, 'child-failed', 60_000);
  t.is(failed.code, 'ERR_ECDYSIS_HANDOFF');
  t.regex(failed.message as string, /worker 1 could not hand over: worker 1 refuses to hand over/);
  // What worker 0 had sent is taken back; worker 1 never gave anything.
  t.like(await g.waitFor((r) => r.type === 'handoff-outcome' && r.gen === 0 && r.worker === 0, 30_000, 'worker 0\'s hand-over outcome'), { outcome: 'failed' });
  t.false(g.records.some((r) => r.type === 'handoff-outcome' && r.worker === 1));
  const failedPrimary = g.records.find((r) => r.type === 'event' && r.event === 'child-spawned' && r.gen === 0)!.childPid as number;
  await waitUntil(() => !isAlive(failedPrimary), 30_000, 'the failed primary exits');
  for (const [index, list] of clients) {
    for (const client of list) {
      t.like(await client.ask('rest'), { text: 'kept-rest', gen: 0, index, pid: workers[index]!.pid });
      t.false(client.closed);
    }
  }
  await waitUntil(() => fdCount(first.pid) === primaryFds, 10_000, `the primary holds ${primaryFds} fds again (${fdCount(first.pid)})`);

  rmSync(throwFile);
  process.kill(first.pid, 'SIGHUP');
  const nextWorkers = await workersReady(g, 1, 2);
  for (const [index, list] of clients) {
    for (const client of list) t.like(await client.ask('moved'), { text: 'moved', gen: 1, index, pid: nextWorkers[index]!.pid });
  }
});

test('a hostile new primary: malformed worker-handoff frames are closed, the valid ones passed on and taken back when it fails; the old group serves on, no fd left behind in the primary or the workers', async (t) => {
  const g = startGenerations(t, 'worker-handoff-service.ts', {
    FIXTURE_WORKERS: '2',
    FIXTURE_NEXT_COMMAND: JSON.stringify({ file: process.execPath, args: fixtureCommand('rogue-primary.ts') }),
  });
  const first = await primary(g, 0);
  const workers = await workersReady(g, 0, 2);
  const clients = await clientsOnEveryWorker(t, first.port as number, 2);
  const pids = [first.pid, ...workers.map((w) => w.pid)];
  const before = pids.map(fdCount);
  for (const list of clients.values()) for (const client of list) client.begin('still-');
  process.kill(first.pid, 'SIGHUP');
  const failed = await g.event(0, 'child-failed', 60_000);
  t.is(failed.code, 'ERR_ECDYSIS_CHILD_EXITED');
  // Only the two valid channels reached a worker, each once, with that worker's hand-over on it.
  const answered = g.records.filter((r) => r.type === 'rogue-answered');
  t.is(answered.length, 2);
  for (const { index, frames, fds } of answered as (Record_ & { index: number; frames: string[]; fds: number })[]) {
    t.is(frames.filter((f) => f === 'socket').length, clients.get(index)!.length, `worker ${index} handed its connections over`);
    t.is(fds, clients.get(index)!.length);
    t.is(frames.at(-1), 'end');
  }
  for (const index of [0, 1]) {
    t.like(await g.waitFor((r) => r.type === 'handoff-outcome' && r.worker === index, 30_000, `worker ${index}'s outcome`), { outcome: 'failed' });
  }
  for (const [index, list] of clients) {
    for (const client of list) t.like(await client.ask('rest'), { text: 'still-rest', gen: 0, index, pid: workers[index]!.pid });
  }
  for (const [n, pid] of pids.entries()) await waitUntil(() => fdCount(pid) === before[n], 10_000, `pid ${pid} holds ${before[n]} fds again (${fdCount(pid)})`);
  t.false(g.records.some((r) => r.type === 'exiting' && r.gen === 0), 'the old group never stopped serving');
});

test('one process → workers: 2 → one process: the single process hands over to the new primary, whose workers start empty; the workers\' hand-overs have no successor in one process (handoff-skipped), the primary\'s goes on', async (t) => {
  const dir = tempDir();
  const sizeFile = join(dir, 'workers');
  writeFileSync(sizeFile, '0');
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS_FILE: sizeFile, FIXTURE_DRAIN_TIMEOUT: '8000' });
  const single = await g.waitFor((r) => r.type === 'ready' && r.gen === 0 && r.role === 'single', 60_000, 'generation 0 ready');
  const client = new Client(single.port as number);
  t.teardown(() => client.socket.destroy());
  t.like(await client.ask('hello'), { gen: 0, pid: single.pid, lines: 1 });
  client.begin('a-');
  writeFileSync(sizeFile, '2');
  process.kill(single.pid, 'SIGHUP');
  const next = await primary(g, 1);
  const nextWorkers = await workersReady(g, 1, 2);
  // The primary got the single process's state and its connection (this application serves it there).
  t.like(await inheritedBy(g, 1, null), { state: { chain: [{ gen: 0, index: null, pid: single.pid }] } });
  t.is(((await inheritedBy(g, 1, null)).sockets as string[]).length, 1);
  for (const index of [0, 1]) t.like(await inheritedBy(g, 1, index), { state: null, sockets: [] });
  t.like(await client.ask('b'), { text: 'a-b', gen: 1, pid: next.pid, lines: 2 });
  await waitUntil(() => !isAlive(single.pid), 30_000, 'generation 0 exits');

  writeFileSync(sizeFile, '0');
  process.kill(next.pid, 'SIGHUP');
  const last = await g.waitFor((r) => r.type === 'ready' && r.gen === 2 && r.role === 'single', 60_000, 'generation 2 ready');
  const inherited = await g.waitFor((r) => r.type === 'inherited' && r.gen === 2, 30_000, 'generation 2 inherited');
  t.deepEqual((inherited.state as { chain: unknown }).chain, [
    { gen: 0, index: null, pid: single.pid },
    { gen: 1, index: null, pid: next.pid },
  ]);
  for (const index of [0, 1]) {
    const skipped = await g.waitFor((r) => r.type === 'event' && r.event === 'handoff-skipped' && r.gen === 1 && r.worker === index, 30_000, `worker ${index} skipped`);
    t.regex(skipped.reason as string, new RegExp(`no worker of generation 2 took worker ${index}'s hand-over`));
  }
  t.false(g.records.some((r) => r.type === 'handoff-outcome' && r.gen === 1 && r.worker !== undefined), 'no worker handler ran');
  t.is(nextWorkers.length, 2);
  t.like(await client.ask('c'), { text: 'c', gen: 2, pid: last.pid, lines: 3 });
});

test('a worker\'s state larger than maxHandoffBytes: the upgrade fails with ERR_ECDYSIS_HANDOFF naming the bound, the old workers keep their connections', async (t) => {
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS: '2', FIXTURE_MAX_HANDOFF: '10000', FIXTURE_STATE_PAD: '20000', FIXTURE_HANDOFF_THROW_WORKER: '0' });
  const first = await primary(g, 0);
  const workers = await workersReady(g, 0, 2);
  const clients = await clientsOnEveryWorker(t, first.port as number, 2);
  process.kill(first.pid, 'SIGHUP');
  const failed = await g.event(0, 'child-failed', 60_000);
  t.is(failed.code, 'ERR_ECDYSIS_HANDOFF');
  t.regex(failed.message as string, /worker 0 could not hand over: .*more than maxHandoffBytes \(10000\)/);
  for (const [index, list] of clients) for (const client of list) t.like(await client.ask('after'), { gen: 0, index, pid: workers[index]!.pid });
});

test('a worker replaced five times (SIGKILL): the primary\'s fd count stays (its channel to each worker closes with it)', async (t) => {
  const g = startGenerations(t, 'worker-handoff-service.ts', { FIXTURE_WORKERS: '2' });
  const first = await primary(g, 0);
  await workersReady(g, 0, 2);
  const before = fdCount(first.pid);
  for (let round = 0; round < 5; round++) {
    const victim = g.records.filter((r) => r.type === 'ready' && r.gen === 0 && r.worker === 1).at(-1)!;
    const since = g.records.length;
    process.kill(victim.pid, 'SIGKILL');
    await g.waitFor((r) => r.type === 'ready' && r.gen === 0 && r.worker === 1 && g.records.indexOf(r) >= since, 30_000, `replacement ${round + 1}`);
  }
  await waitUntil(() => fdCount(first.pid) === before, 10_000, `the primary holds ${before} fds again (${fdCount(first.pid)})`);
  t.pass();
});
