/**
 * The service `npm run soak` upgrades over and over: node:http through
 * `listener.serve()`, every response tagged with `x-generation`.
 *
 *   SOAK_PORT=8080 SOAK_PLAN=/tmp/plan.json node --import tsx soak/app.ts
 *
 * Every generation writes one JSON line per lifecycle step to stdout (see
 * SoakRecord in plan.ts). Later generations inherit that stdout, so the driver
 * reads all of them from the one pipe it gave generation 0. Each record is one
 * write() well under PIPE_BUF, so lines of two generations never interleave.
 *
 * How a new generation behaves comes from the plan file the driver writes
 * before each upgrade (SOAK_PLAN), read once at start.
 *
 * Environment: SOAK_PORT (required), SOAK_PLAN, SOAK_UPGRADE_TIMEOUT (ms, default
 * 5000), SOAK_DRAIN_TIMEOUT (ms, default 10000), SOAK_PROBATION (ms; passed to
 * Ecdysis.create() only when set, for versions of the library that have it).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { Ecdysis, type EcdysisOptions } from '../src/index.ts';
import { EXIT_AFTER_READY_MS, SLOW_START_MS, readPlan, type Behaviour, type SoakRecord } from './plan.ts';

const env = process.env;
const upgradeTimeout = Number(env.SOAK_UPGRADE_TIMEOUT ?? 5_000);
const drainTimeout = Number(env.SOAK_DRAIN_TIMEOUT ?? 10_000);

// Only when asked: today's create() rejects options it does not know.
const options: EcdysisOptions & { probation?: number } = {
  upgradeOn: ['SIGHUP'],
  stopOn: ['SIGTERM', 'SIGINT'],
  upgradeTimeout,
  ...(env.SOAK_PROBATION ? { probation: Number(env.SOAK_PROBATION) } : {}),
};
const ecdysis = await Ecdysis.create(options);

const plan = readPlan(env.SOAK_PLAN);
const planned = plan && plan.generation === ecdysis.generation && ecdysis.isChild ? plan : undefined;
const behaviour: Behaviour = planned?.behaviour ?? 'ok';

function record(type: string, fields: Partial<SoakRecord> = {}): void {
  const line: SoakRecord = { type, pid: process.pid, gen: ecdysis.generation, attempt: planned?.attempt ?? null, time: Date.now(), ...fields };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

/** Open descriptors, the one readdir itself opens included (constant, so counts compare). */
function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

function rssKb(): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  return match ? Number(match[1]) : NaN;
}

// 'exit' handlers run on process.exit() and on an uncaught exception, not on SIGKILL;
// the pipe write is synchronous on Linux, so the line gets out before the process ends.
process.on('exit', (code) => record('exit', { exitCode: code }));

ecdysis.events().subscribe((event) => {
  const { type, time: _time, pid: _pid, generation: _generation, ...rest } = event;
  const fields: Partial<SoakRecord> = { event: type, ...rest };
  if ('error' in rest) {
    const { error } = rest;
    delete fields.error;
    Object.assign(fields, { code: error.code, message: error.message, exitCode: error.exitCode, signal: error.signal });
  }
  // The serving generation's footprint each time it is asked to upgrade: a leak
  // across upgrades shows as growth from the first such record to the last.
  if (type === 'requested') Object.assign(fields, { fds: fdCount(), rssKb: rssKb() });
  record('event', fields);
});

const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(env.SOAK_PORT) });
const server = createServer((_req, res) => {
  res.setHeader('x-generation', String(ecdysis.generation));
  res.end(`generation ${ecdysis.generation} pid ${process.pid}\n`);
});
web.serve(server);
// Holds the inherited socket now, so a kill from here on lands in the middle of the hand-over.
record('created', { behaviour });

switch (behaviour) {
  case 'crash-before-ready':
    process.exit(3);
  case 'throw':
    // A genuine uncaught exception from the event loop, not a rejected top-level await.
    setImmediate(() => {
      throw new Error('soak: new generation crashed while starting');
    });
    break;
  case 'hang':
    // Never ready, and kept alive, so only the parent's upgradeTimeout ends it.
    setInterval(() => {}, 60_000);
    break;
  case 'sigkill-during-handover':
    // The driver kills this process as soon as it sees 'created'. Waiting (within
    // the timeout) makes sure the kill lands before ready(); should it not come,
    // carry on as 'ok' and let the driver report the missed kill.
    await new Promise((r) => setTimeout(r, Math.min(2_000, upgradeTimeout / 2)));
    await serve();
    break;
  case 'slow-start':
    await new Promise((r) => setTimeout(r, SLOW_START_MS));
    await serve();
    break;
  case 'exit-after-ready':
  case 'ok':
    await serve();
    break;
}

async function serve(): Promise<void> {
  await ecdysis.ready();
  record('ready', { behaviour, fds: fdCount(), rssKb: rssKb() });
  if (behaviour === 'exit-after-ready') setTimeout(() => process.exit(1), EXIT_AFTER_READY_MS);
  const exit = await ecdysis.exit;
  record('exiting', { mode: exit.mode, reason: exit.reason });
  const result = await ecdysis.drain({ timeout: drainTimeout });
  record('drained', { ...result });
}
