/**
 * The markdown report (results/report.md) and the excerpt bench/README.md
 * quotes. Tables only say what was measured; the method is stated next to them.
 */
import { FAILURE_KINDS, type FailureKind } from '../../../examples/lib/http-load.ts';
import type { MessageRate } from '../datagrams.ts';
import type { BenchResults } from '../results.ts';
import { median, spread, type Spread } from '../lib/stats.ts';
import { START_PHASES, type StartPhases } from '../lib/lifecycle-log.ts';
import type { GrowthSequence } from '../growth.ts';
import type { MappingKind } from '../lib/proc.ts';
import type { UpgradeSummary } from '../upgrade/analyse.ts';
import * as f from './format.ts';
import { failuresRatio, goalsSection } from './goals.ts';

const KIND_LABELS: Record<FailureKind, string> = {
  refused: 'refused',
  reset: 'reset',
  hangup: 'hang-up',
  timeout: 'timeout',
  status: 'non-2xx',
  other: 'other',
};

/** Busy fractions as a percentage range ("92–95%"). */
function pct(values: number[]): string {
  const [lo, hi] = [Math.min(...values), Math.max(...values)].map((n) => Math.round(n * 100));
  return lo === hi ? `${lo}%` : `${lo}–${hi}%`;
}

export function machineLine(results: BenchResults): string {
  const m = results.machine;
  return (
    `${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB RAM, ${m.kernel}; Node ${m.node}, ecdysis ${m.library}, pm2 ${m.pm2}, autocannon ${m.autocannon}; ` +
    `run ${m.date.slice(0, 16).replace('T', ' ')} UTC, ${Math.round(results.elapsedS)} s in all, load average ${m.loadAverage.toFixed(2)} and ${Math.round(m.busyBefore * 100)}% CPU busy just before it.`
  );
}

export function upgradeTables(results: BenchResults): string {
  const upgrade = results.upgrade;
  if (!upgrade) return '';
  const o = upgrade.options;
  const failures = f.table(
    ['strategy', 'restarts', 'completed requests', 'failed', ...FAILURE_KINDS.map((k) => `${KIND_LABELS[k]} / restart`)],
    upgrade.strategies.map((s) => [
      s.label + (s.error ? ' ⚠' : ''),
      String(s.restarts),
      f.count(s.completed),
      f.count(s.failed),
      ...FAILURE_KINDS.map((k) => f.rate(s.failuresPerRestart[k])),
    ]),
  );
  const timing = f.table(
    ['strategy', 'latency in restart windows, ms (p50 / p99 / max)', 'latency outside, ms (p50 / p99 / max)', 'trigger → new process serving, ms', 'trigger → old process done serving, ms', 'trigger → old process gone, ms'],
    upgrade.strategies.map((s) => [s.label, f.latency(s.latencyInside), f.latency(s.latencyOutside), f.spread(s.toServing), s.toOldDone ? f.spread(s.toOldDone) : '', f.spread(s.toOldGone)]),
  );
  return [
    `${o.restarts} restarts per strategy under continuous load: ${o.keepAliveClients} keep-alive clients and ${o.freshClients} ` +
      `new-connection-per-request clients, in two load processes that never retry (request timeout ${o.requestTimeoutMs / 1000} s); ` +
      `${o.warmupMs / 1000} s of load before the first restart and ${o.settleMs / 1000} s after each hand-over` +
      (o.cycleMs
        ? `, each restart at least ${o.cycleMs / 1000} s after the one before, for every strategy alike: the latency outside the windows then covers the same share of time ` +
          `just after an upgrade (a new process warming up) for each, whether its old process goes at once or waits out a probation.`
        : '.'),
    '',
    failures,
    '',
    timing,
  ].join('\n');
}

export function steadyStateTables(results: BenchResults): string {
  const lines: string[] = [];
  const steady = results.steadyState;
  if (steady) {
    const o = steady.options;
    const busy = (kind: 'connections' | 'requests') =>
      `the load process was ${pct(steady.variants.map((v) => v[kind].clientBusy))} busy and the server ${pct(steady.variants.map((v) => v[kind].serverBusy))}`;
    lines.push(
      `${o.rounds} rounds (after ${o.warmupRounds} not recorded), one server process per variant throughout; in each round every variant runs side by side with (a), at the same time on the same CPU, ` +
        `first ${f.count(o.connectionsPerRound)} new connections (one request each, ${o.connections} at a time), then ${f.count(o.requestsPerRound)} keep-alive requests (over ${o.connections} connections kept open), ` +
        `each server the same, all from one load process; servers on CPU ${o.serverCpu}, load on CPU ${o.clientCpu}: whatever else the machine does falls on both servers of a pair alike. ` +
        'Ratios are to (a) in the same round, median (min–max) over the rounds; ' +
        'server CPU is the time the server process\'s threads spent on a CPU (schedstat, ns) per connection or request; connections/s and requests/s are each server\'s while it shared its CPU with (a).',
      '',
      f.table(
        ['accept path', 'connections/s', 'ratio', 'server CPU µs / connection', 'ratio', 'requests/s (keep-alive)', 'ratio', 'server CPU µs / request', 'ratio'],
        steady.variants.map((v) => [
          v.label,
          f.count(v.connections.perSecond.median),
          f.spread(v.connections.ratio, f.ratio),
          f.ms(v.connections.serverCpuUs.median),
          f.spread(v.connections.cpuRatio, f.ratio),
          f.count(v.requests.perSecond.median),
          f.spread(v.requests.ratio, f.ratio),
          f.ms(v.requests.serverCpuUs.median),
          f.spread(v.requests.cpuRatio, f.ratio),
        ]),
      ),
      '',
      `CPU use (medians): during connections/s runs ${busy('connections')}; during requests/s runs ${busy('requests')}. ` +
        'Where the load process is the one near 100%, throughput ratios understate the difference and CPU per connection or request is the better measure.',
    );
  }
  const mib = (n: number) => n.toFixed(1);
  if (results.memory) {
    lines.push(
      '',
      f.table(
        ['idle service', 'RSS after start-up, MiB', 'RSS after 1 s of load, MiB', 'minor page faults from its start to the idle reading'],
        results.memory.map((m) => [m.label, f.spread(m.idleMiB, mib), f.spread(m.afterLoadMiB, mib), m.idleFaults ? f.spread(m.idleFaults, f.count) : '']),
      ),
    );
    const plain = results.memory.find((m) => m.id === 'plain')?.idleByMapping;
    const served = results.memory.find((m) => m.id === 'ecdysis')?.idleByMapping;
    if (plain && served) {
      const kib = (n: number) => (n / 1024).toFixed(2);
      const signedKib = (n: number) => `${n >= 0 ? '+' : '−'}${kib(Math.abs(n))}`;
      const rows = MAPPINGS.filter(([kind]) => plain[kind] > 0 || served[kind] > 0);
      lines.push(
        '',
        'Where the idle RSS is, by what is mapped there (medians, MiB; from /proc/<pid>/smaps):',
        '',
        f.table(
          ['mapping', 'plain http.Server', 'ecdysis + listener.serve(server)', 'difference'],
          rows.map(([kind, label]) => [label, kib(plain[kind]), kib(served[kind]), signedKib(served[kind] - plain[kind])]),
        ),
      );
    }
  }
  if (results.imports) {
    lines.push(
      '',
      'Where the difference comes from: a fresh `node` process, idle, importing nothing, all of rxjs (for comparison: ecdysis loads only `rxjs/internal/Observable`, and only once an Observable is asked for) or ecdysis:',
      '',
      f.table(['idle process', 'RSS, MiB'], results.imports.map((i) => [i.label, f.spread(i.idleMiB, mib)])),
    );
  }
  return lines.join('\n');
}

const MAPPINGS: [MappingKind, string][] = [
  ['anonymous', 'anonymous memory (V8\'s heap, stacks)'],
  ['node', 'the node executable (pages of the page cache, shared by every node process)'],
  ['malloc', 'malloc\'s heap'],
  ['addon', 'native addon (ecdysis.node)'],
  ['libraries', 'shared libraries'],
  ['other', 'other (stack, vdso)'],
];

export function growthTable(results: BenchResults): string {
  const growth = results.growth;
  if (!growth) return '';
  const floors = (results.imports ?? []).map((i) => [`${i.label}, spawn to exit${i.id === 'bare' ? ' (the floor)' : ''}`, f.spread(i.startupMs), '', '']);
  const drain = (row: (typeof growth.rows)[number]) =>
    row.drain && row.drain.connections > 0
      ? `${f.count(row.drain.connections)} drained in ${f.ms(row.drain.elapsedMs)} ms (${f.count(row.drain.closedIdle)} idle closed, ${f.count(row.drain.destroyed)} destroyed)`
      : '';
  const name = (row: (typeof growth.rows)[number]) =>
    row.dimension === 'listeners' ? `${f.count(row.count)} listener${row.count === 1 ? '' : 's'}` : `${f.count(row.count)} open connections`;
  const plainStart = growth.plainStart ? [['plain node:http app (no ecdysis): spawn → listening (the application\'s own start)', f.spread(growth.plainStart), '', '']] : [];
  const plain = (growth.plainStop ?? []).map((p) => [`plain node:http app (no ecdysis), ${f.count(p.connections)} open connections: SIGTERM → exit`, '', f.spread(p.toExit), '']);
  const table = f.table(
    ['ecdysis app', 'trigger → child ready, ms', 'trigger → old generation exited, ms', 'drain'],
    [
      ...floors,
      ...plainStart,
      ...growth.rows.map((row) => [name(row), f.spread(row.toChildReady), f.spread(row.toOldExit), drain(row)]),
      ...plain,
    ],
  );
  return [table, sequenceLine(growth.sequence), startPhasesTable(results)].filter(Boolean).join('\n\n');
}

function sequenceLine(seq: GrowthSequence | undefined): string {
  if (!seq || seq.toChildReady.length < 20) return '';
  const tens = (values: number[]) => `${f.ms(median(values.slice(0, 10)))} / ${f.ms(median(values.slice(-10)))}`;
  return (
    `${seq.toChildReady.length} upgrades in a row (1 listener, one after the other), medians of the first 10 / the last 10: trigger → child ready ${tens(seq.toChildReady)} ms, ` +
    `trigger → old generation exited ${tens(seq.toOldExit)} ms; open fds of each new generation ${Math.min(...seq.fds)} to ${Math.max(...seq.fds)} (first ${seq.fds[0]}, last ${seq.fds.at(-1)}), ` +
    `its RSS ${seq.rssMiB[0]!.toFixed(1)} MiB first, ${seq.rssMiB.at(-1)!.toFixed(1)} MiB last.`
  );
}

/** Where a new generation's start went: idle (section 3's 1-listener row) and under the load of section 1. */
function startPhasesTable(results: BenchResults): string {
  const rows: [string, Record<keyof StartPhases, Spread>][] = [];
  const idle = results.growth?.rows.find((r) => r.dimension === 'listeners' && r.count === 1)?.startPhases;
  if (idle) rows.push(['1 listener, idle machine', idle]);
  for (const s of results.upgrade?.strategies ?? []) if (s.startPhases) rows.push([`${s.label}, under the load of section 1`, s.startPhases]);
  if (rows.length === 0) return '';
  return [
    "Where a new generation's start goes (apps/ecdysis-http.mjs reads its clock at each step and reports it; ms, median (min–max) over the upgrades): trigger → the new process's `performance.timeOrigin` (the signal, the old generation spawning it, Node's earliest start-up); → its script runs (Node's bootstrap and the app's static imports, node:http among them); → `import` of ecdysis; → `Ecdysis.create()`; → listeners and servers set up; → `ready()` resolved, the old generation having committed.",
    '',
    f.table(
      ['upgrades', 'spawn', 'bootstrap', 'import ecdysis', 'create()', 'listen + serve', 'ready()'],
      rows.map(([label, p]) => [label, ...START_PHASES.map((k) => f.spread(p[k]))]),
    ),
  ].join('\n');
}

export function datagramTables(results: BenchResults): string {
  const datagrams = results.datagrams;
  if (!datagrams) return '';
  const o = datagrams.options;
  const busy = (rows: MessageRate[]) => `the load process was ${pct(rows.map((r) => r.clientBusy))} busy and the server ${pct(rows.map((r) => r.serverBusy))}`;
  const udp = f.table(
    ['UDP echo server', 'answers/s', 'ratio to (c)', 'server CPU µs / answer', 'ratio to (c)', 'answered', 'lost', 'late'],
    datagrams.udp.map((v) => [
      v.label,
      f.count(v.perSecond.median),
      f.spread(v.ratio, f.ratio),
      f.ms(v.serverCpuUs.median),
      f.spread(v.cpuRatio, f.ratio),
      f.count(v.answered),
      f.count(v.lost),
      f.count(v.late),
    ]),
  );
  const echo = f.table(
    ['Unix echo server', 'message, bytes', 'messages/s', 'ratio to stream', 'server CPU µs / message', 'ratio to stream', 'echoed', 'missing or failed'],
    datagrams.echo.map((r) => [
      r.label,
      f.count(r.size),
      f.count(r.perSecond.median),
      r.transport === 'stream' ? '' : f.spread(r.ratio, f.ratio),
      f.ms(r.serverCpuUs.median),
      r.transport === 'stream' ? '' : f.spread(r.cpuRatio, f.ratio),
      f.count(r.echoed),
      f.count(r.missing + r.errors),
    ]),
  );
  return [
    `${o.rounds} interleaved rounds of ${o.durationMs / 1000} s per server (and message size); servers on CPU ${o.serverCpu}, load on CPU ${o.clientCpu}. ` +
      'Rates are medians (min–max) over the rounds, ratios are to the baseline in the same round; server CPU is the server process\'s user + system time per answered message.',
    '',
    `UDP: ${o.udp.clients} client sockets, each keeping ${o.udp.window} requests of ${o.udp.size} bytes outstanding; a request unanswered after ${o.udp.lossTimeoutMs} ms is lost (an answer after that is late). Counts are totals over the rounds.`,
    '',
    udp,
    '',
    `Unix seqpacket: ${o.seqpacket.connections} connections, each keeping ${o.seqpacket.window} messages in flight. The stream row is not a seqpacket baseline (Node has no seqpacket sockets): the same echo over a \`node:net\` Unix stream socket, framed.`,
    '',
    echo,
    '',
    `CPU use (medians): during UDP runs ${busy(datagrams.udp)}; during Unix echo runs ${busy(datagrams.echo)}. ` +
      'In this closed loop the server and the load process partly take turns, so the rates reflect both sides\' cost per message (and, when the load process ' +
      'is near 100%, mostly its own); server CPU per message is the server\'s alone and the better measure.',
  ].join('\n');
}

/** p50 / max of a spread. */
function p50max(s: Spread, unit: (n: number) => string = f.ms): string {
  return s.n === 0 ? '–' : `${unit(s.median)} / ${unit(s.max)}`;
}

export function handoffTables(results: BenchResults, details = true): string {
  const handoff = results.handoff;
  if (!handoff) return '';
  const o = handoff.options;
  const mib = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : '–');
  const base = handoff.cases.find((c) => c.id === 'none');
  const ratio = (own: Spread, baseline: Spread | undefined) => (baseline && baseline.n > 0 && own.n > 0 ? f.ratio(own.median / baseline.median) : '–');
  const main = f.table(
    [
      'case',
      'state, bytes',
      'upgrades (verified)',
      'SIGHUP → new generation ready, ms (p50 / max)',
      'hand-over: create → inherited() in the new generation, ms (p50 / max)',
      'SIGHUP → old generation exited, ms (p50 / max)',
      'peak RSS, old generation, MiB (p50 / max)',
      'peak RSS, new generation, MiB (p50 / max)',
      'RSS after the hand-over, old / new, MiB (p50)',
      'peak RSS vs baseline, old / new (p50)',
    ],
    handoff.cases.map((c) => [
      c.label + (c.errors.length ? ' ⚠' : ''),
      f.count(c.stateBytes),
      `${c.upgrades} (${c.verified})`,
      p50max(c.toReadyMs),
      p50max(c.handoverMs),
      p50max(c.toOldExitMs),
      p50max(c.oldPeakMiB, mib),
      p50max(c.newPeakMiB, mib),
      `${mib(c.oldRssAtExitMiB.median)} / ${mib(c.newRssMiB.median)}`,
      `${ratio(c.oldPeakMiB, base?.oldPeakMiB)} / ${ratio(c.newPeakMiB, base?.newPeakMiB)}`,
    ]),
  );
  const lines = [
    `${o.repetitions} repetitions per case, each a fresh generation 0 upgraded ${o.upgrades} times by SIGHUP, one upgrade after the other ` +
      `(cases interleaved, each first in turn); \`maxHandoffBytes\` ${f.count(o.maxHandoffBytes)}. A new generation checks the state it inherited ` +
      '(length or record count, and a checksum) before `ready()`: "verified" counts the upgrades where it arrived whole. ' +
      'Peak RSS is VmHWM from `/proc/<pid>/status`, read by the driver: the old generation\'s ' +
      (handoff.peakReset ? 'peak is reset to its current RSS just before the SIGHUP (`/proc/<pid>/clear_refs`), so it is the hand-over\'s, ' : 'peak could not be reset, so it is its lifetime peak, ') +
      `read every 10 ms until it exits; the new generation's ${o.settleMs / 1000} s after it is ready (its RSS after the hand-over too). ` +
      'The old generation\'s RSS after the hand-over is its last reading before it exited.',
    '',
    main,
  ];
  if (details) {
    lines.push(
      '',
      f.table(
        [
          'case',
          'JSON records',
          'generation 0 builds the state, ms',
          'generation 0 peak RSS before its first upgrade, MiB',
          'old generation RSS before the SIGHUP, MiB (p50)',
          'old generation: `handoff.state()`, ms (p50 / max)',
          'new generation: checking the state, ms (p50 / max)',
          'new generation: `arrayBuffers` 500 ms after ready, MiB (p50)',
        ],
        handoff.cases.map((c) => [
          c.label,
          c.id === 'json' ? f.count(c.records) : '',
          c.id === 'none' ? '' : f.ms(c.buildMs),
          f.spread(c.gen0PeakMiB, mib),
          mib(c.oldRssBeforeMiB.median),
          c.id === 'none' ? '' : p50max(c.stateCallMs, (n) => n.toFixed(1)),
          p50max(c.verifyMs, (n) => n.toFixed(1)),
          mib(c.newArrayBuffersMiB.median),
        ]),
      ),
    );
    const errors = handoff.cases.flatMap((c) => c.errors.map((e) => `${c.label}: ${e}`));
    if (errors.length) lines.push('', 'Failed series:', '', ...errors.map((e) => `- ${e}`));
  }
  return lines.join('\n');
}

/** Upgrade under load, HTTP/2: naive restart against ecdysis. */
export function http2Table(results: BenchResults): string {
  const h2 = results.http2;
  if (!h2) return '';
  const o = h2.options;
  return [
    `HTTP/2 (h2c), ${o.restarts} restarts per strategy: ${o.sessions} sessions of ${o.streamsPerSession} concurrent streams each, every fifth stream ${o.slowMs} ms long, ` +
      `from a separate process that never retries a failed stream (stream timeout ${o.streamTimeoutMs / 1000} s); a stream refused unprocessed (REFUSED_STREAM before any response, ` +
      `RFC 9113 §8.7, which Node's client does by itself to a stream it had queued when a GOAWAY arrives) is sent once more and counted apart; ` +
      `${o.warmupMs / 1000} s of load before the first restart and ${o.settleMs / 1000} s after each hand-over.`,
    '',
    f.table(
      ['strategy', 'restarts', 'completed streams', 'failed', ...FAILURE_KINDS.map((k) => `${KIND_LABELS[k]} / restart`), 'refused unprocessed, sent again', 'trigger → new process serving, ms', 'trigger → old process gone, ms'],
      h2.strategies.map((s) => [
        s.label + (s.error ? ' ⚠' : ''),
        String(s.restarts),
        f.count(s.completed),
        f.count(s.failed),
        ...FAILURE_KINDS.map((k) => f.rate(s.restarts ? s.failures[k] / s.restarts : 0)),
        f.count(s.resentUnprocessed),
        f.spread(s.toServing),
        f.spread(s.toOldGone),
      ]),
    ),
  ].join('\n');
}

/** The compileCache option on the Fastify app. */
export function compileCacheTable(results: BenchResults): string {
  const cc = results.compileCache;
  if (!cc) return '';
  if (cc.rows.length === 0) return `Not measured: ${cc.missing.join(', ')} missing.`;
  return [
    `SIGHUP → new generation ready (its \`child-ready\` event), the Fastify app (\`apps/ecdysis-fastify.mjs\`, examples/fastify.ts in JavaScript), ` +
      `series of ${cc.upgrades} upgrades from a fresh cache directory, interleaved; the first upgrade's new generation finds no cache yet (generation 0 runs without it).`,
    '',
    f.table(
      ['Node', 'compileCache', 'first upgrade, ms', 'later upgrades, ms', 'later, ratio to without'],
      cc.rows.map((r) => {
        const without = cc.rows.find((o) => o.node === r.node && !o.cache)!;
        return [r.node, r.cache ? 'on' : 'off', String(Math.round(r.first)), f.spread(r.later), (r.later.median / without.later.median).toFixed(2)];
      }),
    ),
  ].join('\n');
}

export function markdownReport(results: BenchResults): string {
  const sections = [
    '# ecdysis benchmark',
    '',
    `Machine: ${machineLine(results)}`,
    '',
    'Generated by `npm run bench` in bench/ (see bench/README.md for the method). Times are wall-clock; ' +
      'latency is per request, from the client; "median (min–max)" is over repetitions.',
  ];
  const goalTable = goalsSection(results);
  if (goalTable) {
    sections.push(
      '',
      '## 0. The goals',
      '',
      'The performance goals (issues 13 and 22) beside this run: every figure compares two things measured in this run, on this machine, with the spread over its repetitions where it has any (min to max); the sections below give the method.',
      '',
      goalTable,
    );
  }
  if (results.upgrade) {
    sections.push('', '## 1. Upgrade under load', '', upgradeTables(results), '', byClient(results.upgrade.strategies), '', '![latency during restarts](latency.svg)', '', firstErrors(results.upgrade.strategies));
  }
  if (results.http2) {
    const failing = results.http2.strategies.filter((s) => s.firstErrors.length > 0 || s.error);
    sections.push(
      '',
      '## 1b. Upgrade under load, HTTP/2',
      '',
      http2Table(results),
      ...(failing.length ? ['', 'First failures:', '', '```', ...failing.flatMap((s) => [`${s.label}${s.error ? ` (run error: ${s.error})` : ''}`, ...s.firstErrors]), '```'] : []),
    );
  }
  if (results.compileCache) sections.push('', '## 1c. The compile cache across generations', '', compileCacheTable(results));
  if (results.steadyState || results.memory || results.imports) sections.push('', '## 2. Steady-state cost', '', steadyStateTables(results));
  if (results.growth) {
    sections.push(
      '',
      '## 3. Upgrade latency and how it grows',
      '',
      'Trigger = SIGHUP sent by the driver; child ready = the old generation\'s `child-ready` event; old generation exited = its `exit` record. ' +
        'Connection rows: idle keep-alive connections (one request each) held by a helper process, drained with `idleTimeout: 0`.',
      '',
      growthTable(results),
    );
  }
  if (results.datagrams) {
    sections.push(
      '',
      '## 4. Datagrams and seqpacket',
      '',
      'UDP: three echo servers run at once, each in its own process: (a) and (b) read through ecdysis `listenUdp` and answer with `msg.reply(msg.data)` ' +
        '(ecdysis reads with a `dgram` socket on its own duplicate of the fd), (c) is a plain `dgram` socket answering with `socket.send(data, port, address)`. ' +
        'Each measurement starts one load process (`src/load/udp-echo-process.ts`): connected `dgram` client sockets, each with a window of outstanding requests ' +
        'carrying an id; every answer lets the next request go, so the rate follows the server and what can be queued at once stays inside its receive buffer. ' +
        'Unix seqpacket: an ecdysis `listenUnixSeqpacket` echo, and a `node:net` Unix stream echo of length-prefixed frames for comparison; ' +
        'the load (`src/load/message-echo-process.ts`) keeps a window of messages in flight per connection, through the library\'s addon for seqpacket ' +
        '(`connectUnix()` and a `PacketSocket`) and `node:net` for the stream. Server CPU comes from `/proc/<pid>/stat` (user + system ticks), read by the driver before and after each measurement.',
      '',
      datagramTables(results),
    );
  }
  if (results.handoff) {
    sections.push(
      '',
      '## 5. State hand-over',
      '',
      'An ecdysis HTTP service (`apps/ecdysis-state.mjs`) whose generation 0 builds an in-memory state: none (the baseline), one Buffer of pseudo-random bytes, ' +
        'or an array of small records whose JSON text is about the same size. Every generation hands it to the next with `onHandoff` → `handoff.state()` ' +
        '(a JSON value is serialised by the library in the old generation, streamed in 60 KiB frames, parsed in the new one), and the new one reads it with ' +
        '`await ecdysis.inherited()` before `ready()`. *SIGHUP → new generation ready* is the new generation\'s record after `ready()` resolved (the old one has committed); ' +
        '*hand-over* is measured inside the new generation, from calling `Ecdysis.create()` to `inherited()` resolving.',
      '',
      handoffTables(results),
    );
  }
  if (results.multicore) {
    sections.push(
      '',
      '## 6. Using every core',
      '',
      'One ecdysis process against option `workers` (a primary and its workers, each worker on its own SO_REUSEPORT socket), serving the same app ' +
        '(`apps/ecdysis-http.mjs` with `BUSY_MS`: each request computes that long before its answer), measured in interleaved rounds by one load process ' +
        '(`src/load/requests-per-second-process.ts`, keep-alive connections) on the same 2 cores. The primary\'s CPU is the time its threads spent on a CPU (schedstat, ns) over the round\'s wall time. ' +
        'Memory: RSS from /proc; the upgrade\'s peak is sampled every 10 ms over every process of the old primary\'s tree (the new primary is its child until it exits). ' +
        'The pm2 rows come from section 1\'s table (same app, same load).',
      '',
      multicoreTable(results),
    );
  }
  if (results.stall) {
    sections.push(
      '',
      '## 7. The serving generation\'s stall at an upgrade',
      '',
      'The ecdysis HTTP app with `STALL=1` (defaults otherwise, no `events()` subscription) times its own event loop with a 1 ms interval timer: ' +
        'the max delay from 500 ms after its `ready()` to the upgrade\'s trigger (its own SIGHUP), and the max from the trigger to the end of its drain (its state \`probation\`: from then on it serves nothing, and waits only to take the service back if its successor fails). ' +
        `${results.stall.options.upgrades} upgrades with the machine otherwise idle, then ${results.stall.options.upgrades} under section 1's load (${results.stall.options.keepAliveClients} keep-alive and ${results.stall.options.freshClients} new-connection clients), ` +
        `each generation upgraded once, ${f.ms(results.stall.options.settleMs)} ms after the one before it exited (about 10 s after its own start, past V8's memory reducer, two major GCs about 8 s into every process's life)` +
        (results.stall.options.minAgeMs ? ` and no sooner than ${f.ms(results.stall.options.minAgeMs)} ms after it began serving, generation 0 included, so that every generation's time outside upgrades spans the same part of its life. ` : '. ') +
        'The last column counts, of each late tick, only the time this process spent on a CPU (any of its threads): the rest of a delay is waiting for a core.',
      '',
      stallTable(results),
    );
  }
  return `${sections.join('\n')}\n`;
}

/** Section 7: each upgrade's window max over outside max, idle and under load. */
export function stallTable(results: BenchResults): string {
  const rows: string[][] = [];
  for (const v of results.stall?.variants ?? []) {
    for (const [label, list] of [
      ['idle', v.idle],
      ['under load', v.load],
    ] as const) {
      if (list.length === 0) continue;
      const over = list.map((s) => s.windowMs - s.outsideMs);
      rows.push([
        `${v.label}, ${label}`,
        list.map((s) => f.ms(s.outsideMs)).join(', '),
        list.map((s) => f.ms(s.windowMs)).join(', '),
        `${Math.max(...over) >= 0 ? '+' : '−'}${f.ms(Math.abs(Math.max(...over)))}`,
        `${over.filter((o) => o <= 2).length} of ${list.length}`,
        f.spread(spread(list.map((s) => s.windowLengthMs))),
        list.every((s) => s.windowBusyMs !== undefined) ? `${list.map((s) => f.ms(s.outsideBusyMs!)).join(', ')} / ${list.map((s) => f.ms(s.windowBusyMs!)).join(', ')}` : '',
      ]);
    }
    if (v.error) rows.push([`${v.label}: run error`, v.error, '', '', '', '', '']);
    else if (v.load.length > 0) rows.push([`${v.label}: load`, `${f.count(v.completed)} requests, ${f.count(v.failed)} failed`, '', '', '', '', '']);
  }
  return f.table(
    ['variant', 'max delay outside, ms (each upgrade)', 'max delay in the window, ms (each)', 'worst window over outside', 'within +2 ms', 'window (trigger → drained), ms', 'of which on a CPU: max outside / in the window, ms (each)'],
    rows,
  );
}

/** Section 6: option `workers` against one process, and pm2 cluster against ecdysis workers in section 1's table. */
export function multicoreTable(results: BenchResults): string {
  const m = results.multicore;
  if (!m) return '';
  const o = m.options;
  const upgrade = results.upgrade?.strategies;
  const pm2 = upgrade?.find((s) => s.id === 'pm2-cluster');
  const ours = upgrade?.find((s) => s.id === 'ecdysis-workers-2');
  const p99Ratio = (s: UpgradeSummary) => s.latencyInside.p99 / s.latencyOutside.p99;
  const rows: string[][] = [
    [`requests/s, a handler computing ${o.busyMs} ms per request, ${o.connections} connections (${o.rounds} rounds of ${o.durationS} s, interleaved; the load generator on the same 2 cores)`, `one process: ${f.spread(m.single, f.count)}; \`workers: ${o.workers}\`: ${f.spread(m.group, f.count)}`, `${f.spread(m.ratio, (n) => `${n.toFixed(2)}×`)}`],
    [`the primary's CPU while its workers serve that load (share of one core${o.minAgeMs ? `; from ${f.ms(o.minAgeMs)} ms after the service began serving, after V8's two memory-reducing GCs of a young process` : ''})`, f.spread(m.primaryCpu, (n) => `${(n * 100).toFixed(2)}%`), ''],
    ['RSS, idle: the primary / one worker / a single-process service', `${m.primaryRssMiB.toFixed(1)} / ${m.workerRssMiB.toFixed(1)} / ${m.singleRssMiB.toFixed(1)} MiB`, ''],
    [`every process of the service together: at steady state / at the peak of an upgrade (both groups alive)`, `${m.steadyTotalMiB.toFixed(1)} / ${m.upgradePeakMiB.toFixed(1)} MiB`, `${(m.upgradePeakMiB / m.steadyTotalMiB).toFixed(2)}×`],
  ];
  if (pm2 && ours) {
    rows.push(
      ['upgrade under section 1\'s load: failed requests, pm2 cluster `reload` (2 instances) / ecdysis `workers: 2`', `${f.count(pm2.failed)} / ${f.count(ours.failed)} (${pm2.restarts} / ${ours.restarts} restarts)`, ''],
      ['trigger → every new process serving, ms (median)', `${f.ms(pm2.toServing.median)} / ${f.ms(ours.toServing.median)}`, `${(ours.toServing.median / pm2.toServing.median).toFixed(2)}×`],
      ['p99 latency in restart windows over p99 outside', `${p99Ratio(pm2).toFixed(2)}× / ${p99Ratio(ours).toFixed(2)}×`, ''],
      ['the same with failed requests counted as the slowest', `${failuresRatio(pm2)} / ${failuresRatio(ours)}`, ''],
    );
  }
  return f.table(['figure', 'measured', 'ratio'], rows);
}

/** The block bench/README.md quotes. */
export function readmeExcerpt(results: BenchResults): string {
  return [
    `Measured on: ${machineLine(results)} Full report: [results/report.md](results/report.md).`,
    '',
    ...(goalsSection(results) ? ['**The goals**', '', goalsSection(results), ''] : []),
    '**Upgrade under load**',
    '',
    upgradeTables(results),
    ...(results.http2 ? ['', '**Upgrade under load, HTTP/2**', '', http2Table(results)] : []),
    ...(results.compileCache ? ['', '**compileCache (Node 22+)**', '', compileCacheTable(results)] : []),
    '',
    '**Steady-state cost**',
    '',
    steadyStateTables(results),
    '',
    '**Upgrade latency growth**',
    '',
    growthTable(results),
    ...(results.datagrams ? ['', '**Datagrams and seqpacket**', '', datagramTables(results)] : []),
    ...(results.handoff ? ['', '**State hand-over**', '', handoffTables(results, false)] : []),
    ...(results.multicore ? ['', '**Using every core**', '', multicoreTable(results)] : []),
  ].join('\n');
}

function byClient(strategies: UpgradeSummary[]): string {
  const cell = (c: UpgradeSummary['keepAlive']) => {
    const failed = c.requests - c.ok;
    const kinds = FAILURE_KINDS.filter((k) => c.failures[k] > 0).map((k) => `${c.failures[k]} ${KIND_LABELS[k]}`);
    return `${f.count(failed)} of ${f.count(c.requests)}${kinds.length ? ` (${kinds.join(', ')})` : ''}`;
  };
  return [
    'Failed requests by client kind, all restarts together (and failures outside any restart window, expected 0):',
    '',
    f.table(
      ['strategy', 'keep-alive clients', 'new connection per request', 'outside restart windows', 'processes that answered'],
      strategies.map((s) => [s.label, cell(s.keepAlive), cell(s.fresh), String(s.failuresOutsideWindows), String(s.servingProcesses)]),
    ),
  ].join('\n');
}

function firstErrors(strategies: UpgradeSummary[]): string {
  const failing = strategies.filter((s) => s.firstErrors.length > 0 || s.error);
  if (failing.length === 0) return '';
  return [
    '<details><summary>First failures per strategy, as the load generator saw them</summary>',
    '',
    ...failing.flatMap((s) => [`**${s.label}**${s.error ? ` (run error: ${s.error})` : ''}`, '', '```', ...s.firstErrors, '```', '']),
    '</details>',
  ].join('\n');
}
