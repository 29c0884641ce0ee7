/**
 * `npm run soak`: upgrade a live HTTP service over and over for minutes, some
 * of the new generations misbehaving on purpose, under load that never
 * retries, and report every failed request next to what caused it.
 *
 *   npm run soak                                   5 minutes, a quarter of the upgrades misbehave
 *   npm run soak -- --minutes 1 --misbehave 0      only well-behaved upgrades
 *   npm run soak -- --seed 42                      replay the same sequence of behaviours and pauses
 *
 * Options: --minutes (default 5, at most 60), --misbehave (fraction, default
 * 0.25), --behaviours (comma-separated bad behaviours to draw from, default
 * all), --seed, --keep-alive-clients (6), --fresh-clients (3),
 * --upgrade-timeout (ms, 5000), --probation (ms, passed to the service only when
 * given). Progress goes to stderr, the report to stdout. Exit code 1 when a
 * request failed, a zombie was seen, an upgrade ended other than its behaviour
 * asks, or the harness itself failed; 2 on a usage error.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { LoadReport } from '../examples/lib/http-load.ts';
import { startLoadProcess, type LoadProcess } from '../examples/lib/load-runner.ts';
import { describe, type AfterDeath, type Attempt, type Generation, type Incident, type Outcome, type Restart } from './outcomes.ts';
import { BAD_BEHAVIOURS, EXIT_AFTER_READY_MS, isBadBehaviour, writePlan, type BadBehaviour, type Behaviour, type SoakRecord } from './plan.ts';
import { OwnedProcesses, ZombieWatch } from './processes.ts';
import { Random } from './random.ts';
import { formatReport } from './report.ts';
import { SoakService } from './service.ts';
import { mustUntil, until } from './until.ts';
import { freePort } from '../examples/lib/free-port.ts';

const MAX_MINUTES = 60;
/**
 * Short, so that a hanging generation costs little, yet room for a slow start:
 * under the soak's own load on 2 cores a new generation takes up to about 1.5 s
 * to get ready, and a slow-start one waits another 1.5 s on top.
 */
const DEFAULT_UPGRADE_TIMEOUT_MS = 5_000;
const PAUSE_MIN_MS = 300;
const PAUSE_MAX_MS = 3_000;
/** Of the well-behaved upgrades, the share that start slowly (still within the timeout). */
const SLOW_START_SHARE = 0.2;
/** Generation 0 is a fresh Node process with the tsx loader: seconds at worst. */
const START_TIMEOUT_MS = 30_000;
/** Beyond upgradeTimeout, for the old generation to notice and report a failed child. */
const ANSWER_SLACK_MS = 15_000;
/** The service's drain deadline: a bound on how long an old generation may keep running. */
const DRAIN_TIMEOUT_MS = 10_000;
/** Beyond the drain (and probation), for an old generation to exit. */
const SETTLE_SLACK_MS = 10_000;
/** The library's default probation, which applies when --probation is not given. */
const LIBRARY_PROBATION_MS = 5_000;
const STOP_TIMEOUT_MS = 30_000;
const LOAD_TIMEOUT_MS = 30_000;
/** Load before the first upgrade, so that it starts on warm connections. */
const WARM_UP_MS = 1_000;
const PROGRESS_EVERY_MS = 15_000;
/** On top of the run itself, for starts, settles, the final stop and the load's report. */
const OVERALL_SLACK_MS = 3 * 60_000;

let options: Options;
try {
  options = parseOptions();
} catch (err) {
  process.stderr.write(`soak: ${(err as Error).message}\n`);
  process.exit(2);
}
const runMs = options.minutes * 60_000;
const started = Date.now();
const random = new Random(options.seed);
const workdir = mkdtempSync(join(tmpdir(), 'ecdysis-soak-'));
const planPath = join(workdir, 'plan.json');
const owned = new OwnedProcesses();
const zombieWatch = new ZombieWatch(owned);
const port = await freePort();
const service = new SoakService(owned, {
  SOAK_PORT: String(port),
  SOAK_PLAN: planPath,
  SOAK_UPGRADE_TIMEOUT: String(options.upgradeTimeout),
  SOAK_DRAIN_TIMEOUT: String(DRAIN_TIMEOUT_MS),
  ...(options.probation === undefined ? {} : { SOAK_PROBATION: String(options.probation) }),
});
/** How long an old generation may take to exit once its successor is ready. */
const settleMs = DRAIN_TIMEOUT_MS + (options.probation ?? LIBRARY_PROBATION_MS) + SETTLE_SLACK_MS;

const attempts: Attempt[] = [];
const incidents: Incident[] = [];
/** Each time the service was lost and the driver started a new generation 0. */
const restarts: Restart[] = [];
let serving: Generation | undefined;
let load: LoadProcess | undefined;
let loadReport: LoadReport | undefined;
let stopAt: number | undefined;
let harnessError: string | undefined;
let cleanedUp = false;

/** Every exit path ends here: nothing this run started outlives it. */
function cleanUp(): void {
  if (cleanedUp) return;
  cleanedUp = true;
  load?.kill();
  owned.killAll();
  zombieWatch.stop();
  rmSync(workdir, { recursive: true, force: true });
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    cleanUp();
    process.stderr.write(`soak: interrupted by ${signal}; every process it started was killed\n`);
    process.exit(1);
  });
}
const overall = setTimeout(() => {
  cleanUp();
  process.stderr.write(`soak: still running ${(runMs + OVERALL_SLACK_MS) / 1000} s after the start; every process it started was killed\n`);
  process.exit(1);
}, runMs + OVERALL_SLACK_MS);
overall.unref();

let progress: NodeJS.Timeout | undefined;
try {
  serving = await startGeneration0();
  load = startLoadProcess({
    port,
    keepAliveClients: options.keepAliveClients,
    freshClients: options.freshClients,
    // Its own bound, should the driver never get to stop it.
    durationMs: runMs + OVERALL_SLACK_MS,
    maxRequests: Number.MAX_SAFE_INTEGER,
    samples: 'failures',
  });
  await withTimeout(load.started, LOAD_TIMEOUT_MS, 'the load to start');
  await new Promise((r) => setTimeout(r, WARM_UP_MS));

  const endAt = Date.now() + runMs;
  const maxAttempts = Math.ceil(runMs / PAUSE_MIN_MS);
  progress = setInterval(printProgress, PROGRESS_EVERY_MS);
  while (Date.now() < endAt && attempts.length < maxAttempts) {
    attempts.push(await upgradeOnce(attempts.length + 1, pickBehaviour()));
    await pauseWatchingServing(random.int(PAUSE_MIN_MS, PAUSE_MAX_MS));
  }
  clearInterval(progress);

  stopAt = Date.now();
  owned.signal(serving.pid, 'SIGTERM');
  await mustUntil(() => (owned.alive().length === 0 ? true : undefined), STOP_TIMEOUT_MS, 'the service to exit after SIGTERM');
  loadReport = await withTimeout(load.stop(), LOAD_TIMEOUT_MS, "the load's report");
} catch (err) {
  harnessError = (err as Error).message;
  // Still worth knowing what the clients saw up to here.
  if (load && !loadReport) loadReport = await withTimeout(load.stop(), LOAD_TIMEOUT_MS, "the load's report").catch(() => undefined);
} finally {
  clearInterval(progress);
  cleanUp();
}

zombieWatch.look();
const { lines, failed } = formatReport({
  setup: [
    `ecdysis soak: node:http service on 127.0.0.1:${port}, ${options.minutes} min, seed ${options.seed}, upgradeTimeout ${options.upgradeTimeout} ms, probation ${options.probation === undefined ? `the default (${LIBRARY_PROBATION_MS} ms)` : `${options.probation} ms`}`,
    options.misbehave > 0 ? `misbehave ${options.misbehave}, among: ${options.behaviours.join(', ')}` : 'misbehave 0: well-behaved upgrades only (ok, slow-start)',
    `load: ${options.keepAliveClients} keep-alive + ${options.freshClients} new-connection-per-request clients, no retries, separate process`,
  ],
  attempts,
  incidents,
  restarts,
  load: loadReport,
  stopAt,
  footprints: service.records.filter((r) => r.type === 'event' && r.event === 'requested'),
  crashes: crashTimes(),
  zombies: zombieWatch.zombies,
  durationMs: Date.now() - started,
  harnessError,
  stderrTail: service.stderrTail,
});
process.stdout.write(`${lines.join('\n')}\n`);
process.exitCode = failed ? 1 : 0;

// --- the steps -----------------------------------------------------------------

async function startGeneration0(): Promise<Generation> {
  const since = service.records.length;
  const pid = service.start();
  const ready = await mustUntil(() => {
    if (service.find(since, (r) => r.type === 'ready' && r.pid === pid)) return 'ready' as const;
    return owned.isAlive(pid) ? undefined : ('exited' as const);
  }, START_TIMEOUT_MS, `generation 0 (pid ${pid}) to be ready`);
  if (ready === 'exited') throw new Error(`generation 0 (pid ${pid}) exited before it was ready`);
  return { pid, gen: 0 };
}

function pickBehaviour(): Behaviour {
  // Always two draws, whatever the branch, so a seed gives one sequence for any --behaviours.
  const misbehaves = random.next() < options.misbehave;
  const draw = random.next();
  if (misbehaves) return options.behaviours[Math.floor(draw * options.behaviours.length)]!;
  return draw < SLOW_START_SHARE ? 'slow-start' : 'ok';
}

/** One SIGHUP to the serving generation, followed until it is known who serves next. */
async function upgradeOnce(n: number, behaviour: Behaviour): Promise<Attempt> {
  const from = serving!;
  const since = service.records.length;
  writePlan(planPath, { attempt: n, generation: from.gen + 1, behaviour });
  const attempt: Attempt = { n, behaviour, from, triggeredAt: Date.now(), settledAt: 0, outcome: { kind: 'no-answer' } };
  const settle = (outcome: Outcome) => Object.assign(attempt, { outcome, settledAt: Date.now() });

  if (!owned.signal(from.pid, 'SIGHUP')) return settle({ kind: 'serving-died', then: await recoverFrom(from.pid, since) });
  let killed = false;
  const answer = await until((): SoakRecord | 'serving-died' | undefined => {
    if (behaviour === 'sigkill-during-handover' && !killed) {
      // 'created' means the new generation holds the inherited socket: mid hand-over.
      const created = service.find(since, (r) => r.type === 'created' && r.attempt === n);
      if (created) {
        owned.signal(created.pid, 'SIGKILL');
        killed = true;
      }
    }
    const event = service.findEvent(since, from.pid, 'child-ready', 'child-failed', 'refused');
    if (event) return event;
    return owned.isAlive(from.pid) ? undefined : 'serving-died';
  }, options.upgradeTimeout + ANSWER_SLACK_MS);

  if (answer === undefined) return settle({ kind: 'no-answer' });
  if (answer === 'serving-died') return settle({ kind: 'serving-died', then: await recoverFrom(from.pid, since) });
  if (typeof answer.elapsedMs === 'number') attempt.answerMs = answer.elapsedMs;
  if (answer.event === 'refused') return settle({ kind: 'refused', code: answer.code ?? '?' });
  if (answer.event === 'child-failed') {
    return settle({ kind: 'failed', code: answer.code ?? '?', exitCode: answer.exitCode ?? null, signal: answer.signal ?? null });
  }

  const successor = answer.childPid!;
  serving = { pid: successor, gen: from.gen + 1 };
  if (behaviour === 'sigkill-during-handover') attempt.killMissed = true;
  if (behaviour === 'exit-after-ready') {
    const died = await until(() => (owned.isAlive(successor) ? undefined : true), EXIT_AFTER_READY_MS + settleMs);
    if (died) return settle({ kind: 'died-after-ready', successor, then: await recoverFrom(successor, since) });
  }
  // The hand-over is complete once the old generation has drained (then the new
  // one may upgrade; an old one in its probation still watches, until the next
  // upgrade releases it), or has exited.
  const end = await until(() => {
    if (service.findEvent(since, successor, 'parent-drained', 'parent-exited')) return 'parent-drained' as const;
    return owned.isAlive(successor) ? undefined : ('died' as const);
  }, settleMs);
  if (end === 'died') return settle({ kind: 'died-after-ready', successor, then: await recoverFrom(successor, since) });
  if (end === undefined) {
    owned.signal(from.pid, 'SIGKILL');
    return settle({ kind: 'old-stayed', successor });
  }
  return settle({ kind: 'succeeded', successor });
}

/** Sleep, but notice at once when the serving generation dies meanwhile. */
async function pauseWatchingServing(ms: number): Promise<void> {
  const current = serving!;
  const since = service.records.length;
  const died = await until(() => (owned.isAlive(current.pid) ? undefined : true), ms);
  if (!died) return;
  const detectedAt = Date.now();
  const then = await recoverFrom(current.pid, since);
  incidents.push({ generation: current, detectedAt, settledAt: Date.now(), then });
}

/**
 * `deadPid` served and died. An older generation still running may take the
 * service back (a `successor-failed` event naming it); once every generation
 * has exited, nobody can, the service is lost, and a new generation 0 takes
 * its place so that the soak goes on.
 */
async function recoverFrom(deadPid: number, since: number): Promise<AfterDeath> {
  const diedAt = Date.now();
  const outcome = await until((): SoakRecord | 'lost' | undefined => {
    const back = service.find(since, (r) => r.type === 'event' && r.event === 'successor-failed' && r.childPid === deadPid);
    if (back) return back;
    return owned.alive().length === 0 ? 'lost' : undefined;
  }, settleMs);
  if (outcome !== undefined && outcome !== 'lost') {
    serving = { pid: outcome.pid, gen: outcome.gen };
    return 'taken-back';
  }
  // Nobody took back within the bound: whatever still runs (an old generation
  // stuck in its drain) holds the port, so it goes first.
  owned.killAll();
  await mustUntil(() => (owned.alive().length === 0 ? true : undefined), STOP_TIMEOUT_MS, 'every generation to exit');
  serving = await startGeneration0();
  restarts.push({ deadPid, downMs: Date.now() - diedAt });
  return 'service-lost';
}

function printProgress(): void {
  const elapsed = Math.round((Date.now() - started) / 1000);
  const counts = new Map<string, number>();
  for (const a of attempts) {
    const label = a.outcome.kind === 'failed' ? 'failed' : describe(a.outcome);
    counts.set(label, (counts.get(label) ?? 0) + 1);
  }
  const summary = [...counts].map(([label, n]) => `${n} ${label}`).join(', ') || 'none yet';
  process.stderr.write(
    `soak ${Math.floor(elapsed / 60)}:${String(elapsed % 60).padStart(2, '0')}: ${attempts.length} upgrades (${summary}); serving generation ${serving?.gen} pid ${serving?.pid}\n`,
  );
}

// --- helpers -------------------------------------------------------------------

/** When each generation that died after it was ready (serving) wrote its last record. */
function crashTimes(): number[] {
  const dead = new Set<number>();
  for (const a of attempts) if (a.outcome.kind === 'died-after-ready') dead.add(a.outcome.successor);
  for (const i of incidents) dead.add(i.generation.pid);
  return service.records.filter((r) => r.type === 'exit' && dead.has(r.pid)).map((r) => r.time);
}

interface Options {
  minutes: number;
  misbehave: number;
  behaviours: BadBehaviour[];
  seed: number;
  keepAliveClients: number;
  freshClients: number;
  upgradeTimeout: number;
  probation: number | undefined;
}

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '5' },
      misbehave: { type: 'string', default: '0.25' },
      behaviours: { type: 'string', default: BAD_BEHAVIOURS.join(',') },
      seed: { type: 'string' },
      'keep-alive-clients': { type: 'string', default: '6' },
      'fresh-clients': { type: 'string', default: '3' },
      'upgrade-timeout': { type: 'string', default: String(DEFAULT_UPGRADE_TIMEOUT_MS) },
      probation: { type: 'string' },
    },
  });
  const number = (name: string, text: string | undefined, min: number, max: number, integer: boolean): number => {
    const value = Number(text);
    if (text === undefined || text.trim() === '' || !Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
      throw new Error(`--${name} must be ${integer ? 'an integer' : 'a number'} from ${min} to ${max}, got ${text}`);
    }
    return value;
  };
  const behaviours = values.behaviours.split(',').map((b) => b.trim()).filter((b) => b !== '');
  const unknown = behaviours.filter((b) => !isBadBehaviour(b));
  if (unknown.length > 0) throw new Error(`--behaviours: unknown ${unknown.join(', ')}; choose among ${BAD_BEHAVIOURS.join(', ')}`);
  const misbehave = number('misbehave', values.misbehave, 0, 1, false);
  if (misbehave > 0 && behaviours.length === 0) throw new Error('--behaviours must name at least one behaviour when --misbehave is above 0');
  const keepAliveClients = number('keep-alive-clients', values['keep-alive-clients'], 0, 100, true);
  const freshClients = number('fresh-clients', values['fresh-clients'], 0, 100, true);
  if (keepAliveClients + freshClients === 0) throw new Error('at least one client is needed');
  return {
    minutes: number('minutes', values.minutes, 0.1, MAX_MINUTES, false),
    misbehave,
    behaviours: behaviours as BadBehaviour[],
    seed: values.seed === undefined ? Math.floor(Math.random() * 0xffff_ffff) : number('seed', values.seed, 0, 0xffff_ffff, true),
    keepAliveClients,
    freshClients,
    // A slow start (1.5 s after a start-up of a few hundred ms) must fit.
    upgradeTimeout: number('upgrade-timeout', values['upgrade-timeout'], 2_500, 600_000, true),
    probation: values.probation === undefined ? undefined : number('probation', values.probation, 0, 600_000, true),
  };
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
