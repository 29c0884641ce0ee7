/**
 * The goals of issues 13 and 22 beside what this run measured: one row per figure, each
 * a ratio or a difference between two things measured in the same run, with
 * its spread; and, for every goal the run misses, a paragraph that says where
 * the time or the memory goes (from this run's own numbers) and what would
 * remove it.
 */
import type { ImportCost } from '../imports.ts';
import type { MappingKind } from '../lib/proc.ts';
import type { StartPhases } from '../lib/lifecycle-log.ts';
import { median, spread, type Spread } from '../lib/stats.ts';
import type { BenchResults } from '../results.ts';
import type { UpgradeSummary } from '../upgrade/analyse.ts';
import * as f from './format.ts';

interface Goal {
  figure: string;
  measured: string;
  goal: string;
  /** 'option': met with an option that is not the default. */
  met: boolean | 'option';
  /** What the report says when the goal is missed. */
  why: () => string;
}

const mib = (n: number) => n.toFixed(1);
const signed = (n: number, unit: (v: number) => string) => `${n >= 0 ? '+' : '−'}${unit(Math.abs(n))}`;
const plusMs = (s: Spread) => `${signed(s.median, f.ms)} ms (${signed(s.min, f.ms)} to ${signed(s.max, f.ms)})`;
const ratioSpread = (s: Spread) => `${f.ratio(s.median)} (${f.ratio(s.min)}–${f.ratio(s.max)})`;

/** Differences of paired runs (run i of `a` against run i of `b`). */
function paired(a: number[] | undefined, b: number[] | undefined): Spread | undefined {
  if (!a || !b || a.length === 0 || a.length !== b.length) return undefined;
  return spread(a.map((v, i) => v - b[i]!));
}

function imported(results: BenchResults, id: string): ImportCost | undefined {
  return results.imports?.find((i) => i.id === id);
}

function strategy(results: BenchResults, id: string): UpgradeSummary | undefined {
  return results.upgrade?.strategies.find((s) => s.id === id);
}

/** p99 inside over outside with failed requests counted as the slowest, formatted. */
export function failuresRatio(s: UpgradeSummary): string {
  if (!s.p99CountingFailures) return 'not measured';
  const { inside, outside } = s.p99CountingFailures;
  // Infinity, or null once the results have been through JSON.
  return !Number.isFinite(inside) ? '∞ (1% or more failed)' : `${f.ratio(inside / outside)}×`;
}

function phasesLine(phases: Record<keyof StartPhases, Spread> | undefined): string {
  if (!phases) return '';
  const p = (k: keyof StartPhases) => f.ms(phases[k].median);
  return (
    `trigger → the new process's time origin ${p('spawn')} ms, Node's bootstrap and the app's own imports ${p('bootstrap')} ms, ` +
    `\`import\` of ecdysis ${p('importLibrary')} ms, \`Ecdysis.create()\` ${p('create')} ms, listeners and servers ${p('listen')} ms, ` +
    `\`ready()\` (one round trip: the old generation commits) ${p('ready')} ms (medians)`
  );
}

export function goals(results: BenchResults): Goal[] {
  const out: Goal[] = [];
  const bare = imported(results, 'bare');
  const withLibrary = imported(results, 'ecdysis');
  const net = imported(results, 'net');
  const observable = imported(results, 'observable');

  // The goal's own pairs (imports.ts, measurePaired) when the run has them, else the interleaved runs paired.
  const pairs = withLibrary?.paired;
  const startup = pairs?.wallMs ?? paired(withLibrary?.startupRuns, bare?.startupRuns);
  if (startup && bare && withLibrary) {
    const netCost = paired(net?.startupRuns, bare.startupRuns);
    const fileCost = paired(imported(results, 'file')?.startupRuns, bare.startupRuns);
    const overService = withLibrary.pairedOverService;
    const quartiles = (s: { q1: number; q3: number }) => `middle half ${signed(s.q1, f.ms)} to ${signed(s.q3, f.ms)}`;
    out.push({
      figure: '`node` + `import ecdysis`, spawn to exit, over bare `node`',
      measured: (pairs
        ? `${plusMs(pairs.wallMs)}, ${quartiles(pairs.wallMs)}, ${pairs.pairs} pairs; CPU time ${signed(pairs.cpuMs.median, f.ms)} ms (${quartiles(pairs.cpuMs)}); ${f.ms(withLibrary.startupMs.median)} vs ${f.ms(bare.startupMs.median)} ms`
        : `${plusMs(startup)}; ${f.ms(withLibrary.startupMs.median)} vs ${f.ms(bare.startupMs.median)} ms`) +
        (overService ? `; over a service that has loaded node:http and a file of its own: ${plusMs(overService.wallMs)} (${quartiles(overService.wallMs)}; CPU ${signed(overService.cpuMs.median, f.ms)} ms)` : ''),
      goal: '≤ +10 ms',
      met: startup.median <= 10,
      why: () =>
        `**Start-up.** Importing ecdysis adds ${f.ms(startup.median)} ms to a bare \`node\` (${pairs ? `${pairs.pairs} pairs run back to back, median; ${f.ms(pairs.cpuMs.median)} ms of CPU time` : 'paired runs, median'}). ` +
        (netCost ? `Importing \`node:net\` alone adds ${f.ms(netCost.median)} ms: the library needs it, as does every network service (node:http loads it). ` : '') +
        (fileCost ? `Importing an empty file adds ${f.ms(fileCost.median)} ms (paired with the bare runs): Node's ESM loader for files, which \`node -e\` does not load and a service's own entry file always does. ` : '') +
        (overService ? `The library's own share is the second figure: ${f.ms(overService.wallMs.median)} ms over the same service without it (${overService.pairs} pairs of \`node\` importing node:http and an empty file, then ecdysis or nothing; ${f.ms(overService.cpuMs.median)} ms of CPU time). ` : '') +
        'What the import does: Node\'s ESM loader resolves the package and reads the file, V8 reads the one bundled file (dist/core.cjs, about 230 kB with its whitespace removed: no module graph to resolve) with its code cache (made for this Node when the package was built or installed: V8 deserializes the compiled code instead of compiling the source, about 3 ms instead of 8 on this machine), the bundle\'s top level runs, and Node loads the built-in modules it needs at once that a bare `node` has not loaded (net and the streams, os, diagnostics_channel, module, vm), each read without its ES module facade; rxjs, child_process, crypto, dns, dgram, http and fs/promises are loaded only on first use, the native addon only at `create()`. ' +
        'What would remove more: less work at the top level (node:net, which every network service loads anyway, loaded on first use), which a service pays once per generation.',
    });
  }

  const oneListener = results.growth?.rows.find((r) => r.dimension === 'listeners' && r.count === 1);
  const plainStart = results.growth?.plainStart;
  if (oneListener && bare) {
    const over = oneListener.toChildReady.median - bare.startupMs.median;
    const overPlain = plainStart ? oneListener.toChildReady.median - plainStart.median : undefined;
    out.push({
      figure: 'trigger → child ready, 1 listener, idle, over bare `node` spawn to exit',
      measured:
        `${signed(over, f.ms)} ms; ${f.spread(oneListener.toChildReady)} vs ${f.spread(bare.startupMs)} ms` +
        (overPlain !== undefined && plainStart ? `; over the plain node:http app's own start (spawn → listening, ${f.spread(plainStart)} ms): ${signed(overPlain, f.ms)} ms` : ''),
      goal: 'over the plain app\'s own start ≤ +15 ms (issue 22)',
      met: overPlain !== undefined && overPlain <= 15,
      why: () =>
        `**Trigger → child ready.** ${f.ms(oneListener.toChildReady.median)} ms against ${f.ms(bare.startupMs.median)} ms for a bare \`node\` that starts and exits` +
        (overPlain !== undefined && plainStart ? ` and ${f.ms(plainStart.median)} ms for the same HTTP app without ecdysis to start listening (its bootstrap and node:http: the application's own initialisation, which the issue counts in the floor); ecdysis adds ${f.ms(overPlain)} ms to that. ` : '. ') +
        (oneListener.startPhases ? `Where it goes (the app's own clock readings, section 3): ${phasesLine(oneListener.startPhases)}. ` : '') +
        'Trigger → time origin is the old generation taking the signal, building the hand-over and spawning (posix_spawn in the addon, which copies no page tables: about 0.5 ms on the serving loop whatever its heap, bench/src/spawn-stall.ts), then Node\'s own earliest start-up, before it takes its `performance.timeOrigin`. ' +
        '`create()` loads the native addon (dlopen of a C++ shared object) and reads and checks the hand-over (hello, each inherited fd described by the kernel); the library\'s code for all of it comes compiled from the code cache (made by a small service\'s whole upgrade when the package was built or installed), so V8 compiles almost none of it while the new generation starts; ' +
        '`ready()` is one round trip to the old generation, which commits. ' +
        'What would remove more: a new generation started ahead of time (a spare that has loaded the application and waits for the trigger), which trades an idle process\'s memory and a stale start for the start-up time; and, for the application\'s own modules, the compile cache (section 1c).',
    });
  }

  const naive = strategy(results, 'naive');
  const ecdysis = strategy(results, 'ecdysis');
  const nice = strategy(results, 'ecdysis-nice');
  const supervisor = strategy(results, 'supervisor');
  if (naive && ecdysis) {
    const ratio = ecdysis.toServing.median / naive.toServing.median;
    out.push({
      figure: 'trigger → new process serving under the bench load, over the same for a naive restart',
      measured: `${f.ratio(ratio)}×; ${f.spread(ecdysis.toServing)} vs ${f.spread(naive.toServing)} ms${nice ? ` (\`niceWhileStarting: 10\`: ${f.ratio(nice.toServing.median / naive.toServing.median)}×)` : ''}`,
      goal: '≤ 1.2×',
      met: ratio <= 1.2,
      why: () =>
        `**Trigger → serving under load.** A naive restart stops serving first: its new process starts on a machine with nothing else to do (every request meanwhile is refused). ` +
        `ecdysis starts the new generation while the old one serves the full load, so on 2 cores the new process gets a share of them: ` +
        (ecdysis.startPhases ? `${phasesLine(ecdysis.startPhases)}, against the idle start of section 3${oneListener?.startPhases ? ` (bootstrap ${f.ms(oneListener.startPhases.bootstrap.median)} ms there)` : ''}. ` : '') +
        (supervisor ? `The socket-holding supervisor, which also starts its new worker while the old one serves, takes ${f.spread(supervisor.toServing)} ms. ` : '') +
        'That is the price of serving every request meanwhile, and it is paid in start-up time, not in failed requests. What would remove it: more cores than the load uses, or a new generation started ahead of time.',
    });
  }

  if (ecdysis) {
    const ratio = ecdysis.latencyInside.p99 / ecdysis.latencyOutside.p99;
    const niceRatio = nice ? nice.latencyInside.p99 / nice.latencyOutside.p99 : undefined;
    out.push({
      figure: 'p99 latency inside upgrade windows over p99 outside (bench load)',
      measured: `${f.ratio(ratio)}×; ${f.ms(ecdysis.latencyInside.p99)} / ${f.ms(ecdysis.latencyOutside.p99)} ms${niceRatio !== undefined ? ` (\`niceWhileStarting: 10\`: ${f.ratio(niceRatio)}×, ${f.ms(nice!.latencyInside.p99)} / ${f.ms(nice!.latencyOutside.p99)} ms)` : ''}`,
      goal: '≤ 1.2×',
      met: ratio <= 1.2 ? true : niceRatio !== undefined && niceRatio <= 1.2 ? 'option' : false,
      why: () =>
        `**p99 in upgrade windows.** While a new generation starts, its start-up (a burst of CPU: Node's bootstrap, the app's imports, \`create()\`) competes for the 2 cores with the serving generation and the load: ` +
        `p99 ${f.ms(ecdysis.latencyInside.p99)} ms inside the windows against ${f.ms(ecdysis.latencyOutside.p99)} ms outside. ` +
        (supervisor ? `The bare supervisor, whose new worker loads no library at all, shows ${f.ms(supervisor.latencyInside.p99)} against ${f.ms(supervisor.latencyOutside.p99)} ms: most of it is starting any Node process next to the serving one. ` : '') +
        (nice
          ? `With \`niceWhileStarting: 10\` the new generation takes CPU time mostly when the serving one does not need it: p99 ${f.ms(nice.latencyInside.p99)} against ${f.ms(nice.latencyOutside.p99)} ms, and the upgrade takes longer (trigger → serving ${f.spread(nice.toServing)} ms against ${f.spread(ecdysis.toServing)} ms). It is an option, not the default, because it needs CAP_SYS_NICE (or an RLIMIT_NICE) to give the priority back and because it trades upgrade time for latency. `
          : '') +
        'The drain itself costs little here: the old generation closes a few keep-alive connections as their responses end.',
    });
  }

  if (ecdysis && supervisor) {
    const ratio = ecdysis.latencyInside.p99 / ecdysis.latencyOutside.p99;
    const floor = supervisor.latencyInside.p99 / supervisor.latencyOutside.p99;
    const cpu = ecdysis.startCpuMs;
    const plainCpu = supervisor.startCpuMs;
    out.push({
      figure: 'p99 inside upgrade windows over outside, against the bare supervisor\'s same ratio (bench load)',
      measured:
        `${f.ratio(ratio)}× vs ${f.ratio(floor)}×` +
        (cpu && plainCpu ? `; each new process's CPU time from its start to serving ${f.spread(cpu)} vs ${f.spread(plainCpu)} ms` : '') +
        `; with failed requests counted as the slowest (the supervisor's ${f.count(supervisor.failed)}): ${failuresRatio(ecdysis)} vs ${failuresRatio(supervisor)}`,
      goal: '≤ the supervisor\'s',
      met: ratio <= floor,
      why: () =>
        `**p99 against the bare supervisor.** ecdysis ${f.ms(ecdysis.latencyInside.p99)} / ${f.ms(ecdysis.latencyOutside.p99)} ms, the supervisor ${f.ms(supervisor.latencyInside.p99)} / ${f.ms(supervisor.latencyOutside.p99)} ms. ` +
        (cpu && plainCpu ? `A new ecdysis generation used ${f.ms(cpu.median)} ms of CPU from its start to serving (under load) against ${f.ms(plainCpu.median)} ms for the supervisor's plain worker: the difference is the library's start-up (import, \`create()\`, \`ready()\`), which competes with the serving generation for the 2 cores. ` : '') +
        `The ratio is of answered requests, and the met column judges that one; a request that fails never counts there, so a strategy that fails the slow requests of its switch (the supervisor's old worker exits with its keep-alive requests in flight) looks faster by them: counted as the slowest requests, the ratios are ${failuresRatio(ecdysis)} and ${failuresRatio(supervisor)}. ` +
        `Over ${ecdysis.restarts} windows the p99 inside is the 99th percentile of ${f.count(ecdysis.latencyInside.n)} requests, most of its slowest 1% from the moments the new processes began serving: a single scheduling delay there moves it.`,
    });
  }

  const stall = results.stall?.variants.find((v) => v.id === 'defaults');
  if (stall && stall.idle.length > 0) {
    const over = (s: { windowMs: number; outsideMs: number }) => s.windowMs - s.outsideMs;
    const worst = (list: typeof stall.idle) => Math.max(...list.map(over));
    const within = (list: typeof stall.idle) => list.filter((s) => over(s) <= 2).length;
    const sides = [
      ['idle', stall.idle],
      ['under load', stall.load],
    ] as const;
    out.push({
      figure: "the serving generation's event-loop delay: max in each upgrade window (trigger → drained) over its own max outside",
      measured: sides
        .filter(([, list]) => list.length > 0)
        .map(([label, list]) => `${label}: ${within(list)} of ${list.length} within +2 ms, worst ${signed(worst(list), f.ms)} ms (window max ${f.spread(spread(list.map((s) => s.windowMs)))} ms, outside ${f.spread(spread(list.map((s) => s.outsideMs)))} ms)`)
        .join('; '),
      goal: '≤ +2 ms, every upgrade',
      met: sides.every(([, list]) => list.length > 0 && within(list) === list.length),
      why: () =>
        `**Stall.** The serving generation timed its own event loop with a 1 ms interval timer (section 7): ` +
        sides.map(([label, list]) => `${label}, windows over outside per upgrade ${list.map((s) => signed(over(s), f.ms)).join(', ')} ms`).join('; ') +
        '. Under load the new generation\'s start-up shares the 2 cores with the serving generation and the load generator: a delay there is the scheduler giving a core to the starting process, not work on the serving loop.',
    });
  }

  const steady = results.steadyState?.variants.find((v) => v.id === 'serve');
  if (steady) {
    for (const [kind, goal, label] of [
      ['connections', 1.02, '`serve()` server CPU per new connection over plain `http.Server`'],
      ['requests', 1.01, '`serve()` server CPU per keep-alive request over plain (spread within ±3%)'],
    ] as const) {
      const r = steady[kind].cpuRatio;
      // Keep-alive: the goal counts only when the run can tell (every round within ±3% of the median).
      const precise = kind === 'connections' || (r.min >= r.median * 0.97 && r.max <= r.median * 1.03);
      out.push({
        figure: label,
        measured: ratioSpread(r),
        goal: `≤ ${goal.toFixed(2)}`,
        met: r.median <= goal && precise,
        why: () =>
          `**${kind === 'connections' ? 'CPU per connection' : 'CPU per request'}.** ${f.ratio(r.median)}, with the rounds spread from ${f.ratio(r.min)} to ${f.ratio(r.max)} ` +
          `(server CPU is the time the process's threads spent on a CPU over ${f.count(kind === 'connections' ? results.steadyState!.options.connectionsPerRound : results.steadyState!.options.requestsPerRound)} ${kind} per server, ` +
          'each round running both servers side by side on one core while the other core runs the load). ' +
          (r.min <= goal && goal <= r.max
            ? 'The goal lies inside the spread: this run cannot tell the difference from noise. '
            : 'The spread does not reach the goal. ') +
          (kind === 'connections'
            ? "Per connection `serve()` adds the socket added to and removed from its listener's Set, one shared 'close' listener, and a small state object on the socket (no closure is allocated). "
            : "Per request `serve()` adds nothing until shutdown begins: whether a connection has a response in flight is read from node:http's own record when the drain needs it, and requests are seen (to say `Connection: close` and time the end of each response) only from the stop on. Row (c), which hands the same sockets to the server without serve(), shows what is left of the accept path. ") +
          'The rounds run one process per variant throughout: how one process differs from the next (JIT, heap layout) moved the keep-alive median by about ±2% between runs.',
      });
    }
  }

  const plain = results.memory?.find((m) => m.id === 'plain');
  const served = results.memory?.find((m) => m.id === 'ecdysis');
  const withEvents = results.memory?.find((m) => m.id === 'ecdysis-events');
  if (plain && served) {
    const idle = paired(served.idleRuns, plain.idleRuns) ?? spread([served.idleMiB.median - plain.idleMiB.median]);
    const loaded = paired(served.afterLoadRuns, plain.afterLoadRuns) ?? spread([served.afterLoadMiB.median - plain.afterLoadMiB.median]);
    const observableCost = observable && bare ? observable.idleMiB.median - bare.idleMiB.median : undefined;
    const [fromPlain, fromServed] = [plain.idleByMapping, served.idleByMapping];
    const byMapping =
      fromPlain && fromServed
        ? (Object.fromEntries(Object.keys(fromPlain).map((kind) => [kind, (fromServed[kind as MappingKind] - fromPlain[kind as MappingKind]) / 1024])) as Record<MappingKind, number>)
        : undefined;
    out.push({
      figure: 'RSS over a plain server: idle / after 1 s of load',
      measured: `${signed(idle.median, mib)} / ${signed(loaded.median, mib)} MiB (${signed(idle.min, mib)} to ${signed(idle.max, mib)} / ${signed(loaded.min, mib)} to ${signed(loaded.max, mib)})`,
      goal: '≤ +2 / ≤ +3 MiB',
      met: idle.median <= 2 && loaded.median <= 3,
      why: () =>
        `**Memory.** The ecdysis service (listener.serve(), no \`events()\`) uses ${mib(idle.median)} MiB more than the plain one when idle and ${mib(loaded.median)} MiB more after 1 s of load` +
        `${idle.median > 2 ? ` (the idle figure misses its goal by ${mib(idle.median - 2)} MiB)` : ''}. ` +
        (byMapping
          ? `Where the idle difference is (section 2, by mapping): anonymous memory ${signed(byMapping.anonymous, mib)} MiB: V8's heap, in pages of 256 kB: the library's source, which V8 keeps for the functions it has not compiled (about 230 kB, in a large-object page of its own), the compiled code the code cache brings (bytecode, scope and feedback metadata) and the library's objects; ` +
            (Math.abs(byMapping.node) >= 0.2
              ? `the node executable ${signed(byMapping.node, mib)} MiB: pages of its dynamic symbol table, read when the addon's Node-API imports are bound, and of its own code that the addon's Node-API calls run and the plain service never does (the kernel maps a file's pages around each one faulted in; page cache shared by every node process, but counted in each one's RSS); `
              : `the node executable ${signed(byMapping.node, mib)} MiB; `) +
            `the addon ${signed(byMapping.addon, mib)} MiB (built for size); malloc's heap ${signed(byMapping.malloc, mib)} MiB. `
          : 'Both services load node:http, net and the streams; what ecdysis adds is its bundled code (compiled functions and their feedback), the native addon and its own objects, none of them large on its own. ') +
        (withEvents ? `Subscribing to \`events()\` loads rxjs's Observable: the service then takes ${f.spread(withEvents.idleMiB, mib)} MiB idle` : '') +
        (observableCost !== undefined ? ` (importing it alone: ${signed(observableCost, mib)} MiB over a bare \`node\`)` : '') +
        (withEvents ? '. ' : '') +
        'What would remove more: none of it is large on its own. Less code loaded at start-up (a smaller bundle, or parts loaded on first use) would leave less source and bytecode in the heap; an addon that binds and calls fewer Node-API functions at its start would map fewer pages of the executable.',
    });
  }

  const tenK = results.growth?.rows.find((r) => r.dimension === 'connections' && r.count === 10_000);
  const zero = results.growth?.rows.find((r) => r.dimension === 'connections' && r.count === 0);
  if (tenK && zero) {
    const over = tenK.toOldExit.median - zero.toOldExit.median;
    const plainZero = results.growth?.plainStop?.find((p) => p.connections === 0);
    const plainTenK = results.growth?.plainStop?.find((p) => p.connections === 10_000);
    const plainOver = plainZero && plainTenK ? plainTenK.toExit.median - plainZero.toExit.median : undefined;
    out.push({
      figure: 'trigger → old generation gone with 10,000 idle keep-alive connections, over 0 connections, against plain Node\'s SIGTERM → exit with the same, over 0',
      measured: `${signed(over, f.ms)} ms; ${f.spread(tenK.toOldExit)} vs ${f.spread(zero.toOldExit)} ms${plainOver !== undefined ? ` (plain Node: ${signed(plainOver, f.ms)} ms; ecdysis over it ${signed(over - plainOver, f.ms)} ms)` : ''}`,
      goal: '≤ +60 ms over plain Node\'s',
      met: plainOver !== undefined && over - plainOver <= 60,
      why: () =>
        `**Drain at scale.** The old generation needs ${f.ms(over)} ms more to exit with 10,000 idle connections than with none; its drain reported ${tenK.drain ? `${f.count(tenK.drain.connections)} connections closed in ${f.ms(tenK.drain.elapsedMs)} ms` : 'no figures'}. ` +
        (plainOver !== undefined
          ? `A plain node:http server closing the same 10,000 idle connections on SIGTERM (server.close(), then exit) needs ${f.ms(plainOver)} ms more than with none (${f.spread(plainTenK!.toExit)} against ${f.spread(plainZero!.toExit)} ms): `
          : 'Closing a socket costs the kernel a close(2) and a FIN each: ') +
        'that is the floor of closing that many sockets one by one on this machine, and ecdysis is ' +
        (plainOver !== undefined ? `${signed(over - plainOver, f.ms)} ms from it. ` : 'close to it. ') +
        'Idle connections are destroy()ed (a FIN; nothing is unread or unsent on them), all in one turn of the event loop when nothing else of the drain is at work, as server.close() does (while a response is in flight, at most 5 ms of them per turn, so that it keeps being served). ' +
        'What plain Node skips by exiting at once is node:http\'s own work on each closed socket\'s \'close\' (freeing its parser, about 10 µs each): here it runs after the drain, while the old generation waits out its probation (with `probation: 0` it would come before the exit). ' +
        'What would remove more: not closing them in the old generation at all, i.e. handing idle keep-alive connections to the new generation (the hand-over of live connections, `handoff.connections()`, does this when the application asks).',
    });
  }

  const seq = results.growth?.sequence;
  if (seq && seq.toChildReady.length >= 20) {
    const first = seq.toChildReady.slice(0, 10);
    const last = seq.toChildReady.slice(-10);
    const ratio = median(last) / median(first);
    out.push({
      figure: `${seq.toChildReady.length} upgrades in a row: trigger → child ready, last 10 over first 10`,
      measured: `${f.ratio(ratio)}×; ${f.ms(median(last))} vs ${f.ms(median(first))} ms; fds ${seq.fds[0]} → ${seq.fds.at(-1)}, RSS ${mib(seq.rssMiB[0]!)} → ${mib(seq.rssMiB.at(-1)!)} MiB`,
      goal: '≤ 1.10× (flat)',
      met: ratio <= 1.1,
      why: () =>
        `**Upgrades in a row.** The last 10 upgrades took ${f.ms(median(last))} ms to child ready against ${f.ms(median(first))} ms for the first 10. ` +
        `Each new generation had ${seq.fds[0]} fds open at the start and ${seq.fds.at(-1)} at the end, so nothing accumulates across generations; the difference is the machine's variation over the ${seq.toChildReady.length} upgrades.`,
    });
  }
  return out;
}

/** The table and the paragraphs for the goals missed. */
export function goalsSection(results: BenchResults): string {
  const rows = goals(results);
  if (rows.length === 0) return '';
  const missed = rows.filter((g) => g.met !== true);
  return [
    f.table(
      ['figure (each measured in this run)', 'measured', 'goal', 'met'],
      rows.map((g) => [g.figure, g.measured, g.goal, g.met === 'option' ? 'with `niceWhileStarting`' : g.met ? 'yes' : '**no**']),
    ),
    ...(missed.length ? ['', `${missed.length === 1 ? 'The goal' : `The ${missed.length} goals`} missed by the defaults, where the difference goes and what would remove it:`, '', ...missed.flatMap((g) => [g.why(), ''])] : []),
  ].join('\n').trimEnd();
}
