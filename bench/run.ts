/**
 * npm run bench: ecdysis against the alternatives, side by side, in one run.
 *
 *   npm run bench                     everything with the defaults (about 26 minutes on 2 cores);
 *                                     writes results/report.md, results/latency.svg, results/results.json
 *                                     and the tables quoted in README.md
 *   npm run bench -- --quick          a smoke run: fewer restarts and rounds, written to results/tmp/
 *   npm run bench -- --only=upgrade,http2,compile-cache,steady-state,memory,imports,growth,datagrams,handoff,multicore,stall
 *                                     some sections only, written to results/tmp/
 *   npm run bench -- --only=growth --growth=drain
 *                                     the growth section's drain at scale only: 0 and 10,000 idle
 *                                     connections, ecdysis upgrade and plain node:http SIGTERM (about 1 min)
 *   npm run bench -- --strategies=naive,ecdysis
 *                                     some upgrade strategies only (naive, pm2-fork, pm2-cluster,
 *                                     supervisor, ecdysis, ecdysis-nice), written to results/tmp/
 *   npm run bench -- --restarts=10    restarts per upgrade strategy (default 5)
 *
 * Needs the library built at the repository root (`npm install` there runs tsc).
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { measureDatagrams } from './src/datagrams.ts';
import { measureGrowth } from './src/growth.ts';
import { measureHandoff } from './src/handoff.ts';
import { measureHttp2 } from './src/http2.ts';
import { measureCompileCache } from './src/compile-cache.ts';
import { measureImports } from './src/imports.ts';
import { measureMemory } from './src/memory.ts';
import { describeMachine } from './src/report/machine.ts';
import { markdownReport, readmeExcerpt } from './src/report/markdown.ts';
import { latencySvg } from './src/report/svg.ts';
import type { BenchResults } from './src/results.ts';
import { measureSteadyState } from './src/steady-state.ts';
import { summariseUpgrades } from './src/upgrade/analyse.ts';
import { runStrategy, type StrategyRun, type UpgradeRunOptions } from './src/upgrade/run.ts';
import { ecdysis, ecdysisNice, ecdysisNice3, ecdysisWorkers2, ecdysisWorkers2Nice } from './src/upgrade/strategies/ecdysis.ts';
import { measureMulticore } from './src/multicore.ts';
import { measureStall } from './src/stall.ts';
import { naive } from './src/upgrade/strategies/naive.ts';
import { pm2Cluster, pm2Fork } from './src/upgrade/strategies/pm2.ts';
import { supervisor } from './src/upgrade/strategies/supervisor.ts';

const SECTIONS = ['upgrade', 'http2', 'compile-cache', 'steady-state', 'memory', 'imports', 'growth', 'datagrams', 'handoff', 'multicore', 'stall'] as const;
type Section = (typeof SECTIONS)[number];

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length).split(',') as Section[] | undefined;
const unknown = only?.filter((s) => !SECTIONS.includes(s));
if (unknown?.length) throw new Error(`unknown section(s) ${unknown.join(', ')}; known: ${SECTIONS.join(', ')}`);
const wanted = (section: Section) => !only || only.includes(section);
const STRATEGIES = [naive, pm2Fork, pm2Cluster, supervisor, ecdysis, ecdysisNice, ecdysisWorkers2, ecdysisWorkers2Nice];
const strategyIds = args.find((a) => a.startsWith('--strategies='))?.slice('--strategies='.length).split(',');
const strategies = strategyIds ? [...STRATEGIES, ecdysisNice3].filter((s) => strategyIds.includes(s.id)) : STRATEGIES;
if (strategyIds && strategies.length !== strategyIds.length) throw new Error(`known strategies: ${STRATEGIES.map((s) => s.id).join(', ')}`);
const growthDrainOnly = args.includes('--growth=drain');
const fullRun = !quick && !only && !strategyIds && !growthDrainOnly;

if (!existsSync(here('../dist/index.js'))) {
  throw new Error('../dist/index.js is missing: run `npm install` (or `npm run build`) at the repository root first');
}

const tmpDir = here('./results/tmp');
const outDir = fullRun ? here('./results') : tmpDir;
rmSync(tmpDir, { recursive: true, force: true });
mkdirSync(tmpDir, { recursive: true });

const restartsArg = args.find((a) => a.startsWith('--restarts='));
const upgradeOptions: UpgradeRunOptions = {
  restarts: restartsArg ? Number(restartsArg.slice('--restarts='.length)) : quick ? 2 : 5,
  warmupMs: 1_500,
  settleMs: 1_500,
  // An ecdysis generation goes about 5.2 s after its trigger (its probation), then 1.5 s of load.
  cycleMs: 7_000,
  keepAliveClients: 8,
  freshClients: 4,
  requestTimeoutMs: 5_000,
  handoverTimeoutMs: 30_000,
  tmpDir,
};

const started = performance.now();
const progress = (message: string): void => void process.stderr.write(`[bench ${((performance.now() - started) / 1000).toFixed(0).padStart(4)} s] ${message}\n`);
const results: BenchResults = { machine: await describeMachine(), elapsedS: 0 };
if (results.machine.busyBefore > 0.15) {
  progress(`warning: ${Math.round(results.machine.busyBefore * 100)}% of the CPUs were busy before the run: something else is running, numbers will be noisy`);
}

if (wanted('upgrade')) {
  const runs: StrategyRun[] = [];
  for (const strategy of strategies) {
    progress(`upgrade under load: ${strategy.label}`);
    const run = await runStrategy(strategy, upgradeOptions);
    if (run.error) progress(`  ${strategy.id}: ${run.error}`);
    runs.push(run);
  }
  const { tmpDir: _tmp, ...options } = upgradeOptions;
  results.upgrade = { options, strategies: runs.map(summariseUpgrades) };
  writeFileSync(join(outDir, 'latency.svg'), latencySvg(runs));
}

if (wanted('http2')) {
  results.http2 = await measureHttp2(
    { restarts: quick ? 2 : 5, warmupMs: 1_500, settleMs: 1_500, sessions: 4, streamsPerSession: 20, slowMs: 300, streamTimeoutMs: 5_000, handoverTimeoutMs: 30_000, tmpDir },
    progress,
  );
}

if (wanted('compile-cache')) {
  progress('compile cache: SIGHUP → ready of the Fastify app with and without compileCache, Node 22+ from .node/');
  results.compileCache = await measureCompileCache({ upgrades: quick ? 3 : 6, rounds: quick ? 1 : 3, tmpDir });
}

if (wanted('steady-state')) {
  progress('steady state: connections/s and requests/s, interleaved');
  results.steadyState = await measureSteadyState({
    rounds: quick ? 2 : 10,
    warmupRounds: quick ? 1 : 2,
    connectionsPerRound: quick ? 1_000 : 5_000,
    requestsPerRound: quick ? 5_000 : 40_000,
    connections: 16,
    serverCpu: 0,
    clientCpu: 1,
    tmpDir,
  });
}

if (wanted('memory')) {
  progress('memory: idle RSS with and without ecdysis');
  results.memory = await measureMemory({ repetitions: quick ? 1 : 3, idleMs: 1_000, tmpDir });
}

if (wanted('multicore')) {
  progress('multi-core: workers: 2 against one process, CPU-bound handler');
  results.multicore = await measureMulticore({ rounds: quick ? 2 : 6, durationS: 3, connections: 16, busyMs: 1, workers: 2, minAgeMs: 10_000, tmpDir }, progress);
}

// settleMs 5 s: with the 5 s probation of the generation before, each generation is upgraded about 10 s
// after its start, so that V8's memory reducer (two major GCs about 8 s into every process's life, 2 to 4 ms
// each on this machine) falls outside its window, as it would in a service that had been running a while;
// minAgeMs holds generation 0, which has no generation before it, to the same age.
if (wanted('stall')) {
  progress('stall: the serving generation\'s event-loop delay in upgrade windows, idle and under load');
  results.stall = await measureStall(
    { upgrades: quick ? 3 : 10, settleMs: 5_000, minAgeMs: 10_000, keepAliveClients: upgradeOptions.keepAliveClients, freshClients: upgradeOptions.freshClients, requestTimeoutMs: upgradeOptions.requestTimeoutMs, tmpDir },
    progress,
  );
}

if (wanted('imports')) {
  progress('imports: start-up time and idle RSS of node, node + rxjs, node + ecdysis');
  results.imports = await measureImports(quick ? 3 : 30, 1_000, quick ? 4 : 80);
}

if (wanted('growth')) {
  progress('growth: upgrade latency by listeners and open connections');
  results.growth = await measureGrowth({
    listenerCounts: growthDrainOnly ? [] : [1, 100, 1_000],
    connectionCounts: growthDrainOnly ? [0, 10_000] : [0, 1_000, 10_000],
    upgrades: quick ? 1 : 5,
    sequence: growthDrainOnly ? 0 : quick ? 20 : 100,
    plainStarts: !growthDrainOnly,
    tmpDir,
  });
}

if (wanted('datagrams')) {
  progress('datagrams: UDP answers/s and Unix seqpacket echoes/s, interleaved');
  results.datagrams = await measureDatagrams({
    rounds: quick ? 2 : 5,
    durationMs: quick ? 1_000 : 2_000,
    udp: { clients: 4, window: 32, size: 64, lossTimeoutMs: 500 },
    seqpacket: { connections: 4, window: 16, sizes: [64, 4_096] },
    serverCpu: 0,
    clientCpu: 1,
    tmpDir,
  });
}

if (wanted('handoff')) {
  progress('handoff: 50 MB of state handed to the next generation (none, a Buffer, JSON): time and peak RSS');
  results.handoff = await measureHandoff({
    repetitions: quick ? 1 : 3,
    upgrades: quick ? 2 : 3,
    stateMB: 50,
    maxHandoffBytes: 256 * 2 ** 20,
    settleMs: 1_000,
    startTimeoutMs: 60_000,
    upgradeTimeoutMs: 60_000,
    tmpDir,
  });
  for (const c of results.handoff.cases) for (const error of c.errors) progress(`  ${c.id}: ${error}`);
}

results.elapsedS = (performance.now() - started) / 1000;
writeFileSync(join(outDir, 'results.json'), `${JSON.stringify(results, null, 2)}\n`);
writeFileSync(join(outDir, 'report.md'), markdownReport(results));
if (fullRun) updateReadme(readmeExcerpt(results));
progress(`done: ${join(outDir, 'report.md')}`);
// pm2's client library keeps timers and sockets of its own alive: end here.
process.exit(0);

function updateReadme(excerpt: string): void {
  const path = here('./README.md');
  const readme = readFileSync(path, 'utf8');
  const start = '<!-- results:start -->';
  const end = '<!-- results:end -->';
  const a = readme.indexOf(start);
  const b = readme.indexOf(end);
  if (a === -1 || b < a) {
    progress('README.md has no results markers; not updated');
    return;
  }
  writeFileSync(path, `${readme.slice(0, a + start.length)}\n${excerpt}\n${readme.slice(b)}`);
}
