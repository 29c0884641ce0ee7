/**
 * The ecdysis HTTP service of ecdysis-http.mjs with a large in-memory state
 * that each generation hands to the next (bench section `handoff`).
 *
 * STATE_KIND: 'none' (no state, no onHandoff: the baseline), 'buffer' (one
 * Buffer of STATE_MB × 1,000,000 pseudo-random bytes) or 'json' (an array of
 * small records whose JSON text is at most STATE_MB × 1,000,000 bytes, and
 * within one record of it). Generation 0 builds it; every generation hands
 * what it holds to the next one with `handoff.state()`, and a new generation
 * reads it with `await ecdysis.inherited()` and checks that it arrived whole
 * (length or record count, and a checksum) against what generation 0 computed.
 * Generation 0 passes that expectation on in STATE_EXPECT: each generation is
 * spawned with the environment of the one before.
 *
 * Records (apps/lifecycle.mjs): 'state-built' (generation 0), 'inherited'
 * (create → inherited() resolved, process start → inherited, verification),
 * 'handoff-given' (old generation: the time `handoff.state()` took, which
 * serialises a JSON state), 'handoff-outcome', 'serving' (after ready()), a
 * 'memory' record (process.memoryUsage()) 500 ms after ready, the ecdysis
 * events the driver needs, and 'exit-memory' (VmHWM and VmRSS from
 * /proc/self/status, as late as Node allows: a cross-check for the driver's
 * own readings). Times are ms, from performance.now() (0 = process start).
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { Ecdysis } from '../../dist/index.js';
import { handle } from './handler.mjs';
import { record } from './lifecycle.mjs';

const env = process.env;
const kind = env.STATE_KIND ?? 'none';
if (!['none', 'buffer', 'json'].includes(kind)) throw new Error(`unknown STATE_KIND=${kind}`);
const targetBytes = Math.round(Number(env.STATE_MB ?? 0) * 1_000_000);
const maxHandoffBytes = Number(env.MAX_HANDOFF_BYTES ?? 256 * 1024 * 1024);
const TAGS = ['alpha', 'beta', 'gamma', 'delta'];

const createStartedAt = performance.now();
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'], maxHandoffBytes });
const createdAt = performance.now();
ecdysis.events().subscribe((event) => {
  switch (event.type) {
    case 'requested':
      return record(event.type, { at: event.time });
    case 'child-spawned':
      return record(event.type, { at: event.time, childPid: event.childPid });
    case 'child-ready':
      return record(event.type, { at: event.time, childPid: event.childPid, elapsedMs: event.elapsedMs });
    case 'child-failed':
      return record(event.type, { at: event.time, code: event.error.code, message: event.error.message, handoff: event.handoff });
    case 'refused':
      return record(event.type, { at: event.time, reason: event.reason, code: event.error?.code });
    case 'handoff-skipped':
      return record(event.type, { at: event.time, reason: event.reason });
    case 'parent-exited':
      return record(event.type, { at: event.time, parentPid: event.parentPid });
    case 'drained':
      return record(event.type, { at: event.time, result: event.result });
  }
});

/** What generation 0 built: { kind, bytes, count, checksum }, or undefined for no state. */
let expected = env.STATE_EXPECT ? JSON.parse(env.STATE_EXPECT) : undefined;
let state;

if (ecdysis.isChild) {
  const inherited = await ecdysis.inherited();
  const inheritedAt = performance.now();
  state = inherited?.state;
  const check = verify(state, expected);
  record('inherited', {
    generation: ecdysis.generation,
    createMs: createdAt - createStartedAt,
    createToInheritedMs: inheritedAt - createStartedAt,
    startToInheritedMs: inheritedAt,
    verifyMs: performance.now() - inheritedAt,
    ...check,
  });
} else if (kind !== 'none') {
  const builtFrom = performance.now();
  const built = kind === 'buffer' ? buildBuffer(targetBytes) : buildJson(targetBytes);
  state = built.state;
  expected = { kind, bytes: built.bytes, count: built.count, checksum: built.checksum };
  env.STATE_EXPECT = JSON.stringify(expected);
  record('state-built', { ...expected, buildMs: performance.now() - builtFrom });
}

if (state !== undefined) {
  ecdysis.onHandoff((handoff) => {
    const from = performance.now();
    // A JSON value is serialised here (JSON.stringify, then UTF-8): the cost lands in this generation.
    handoff.state(state);
    record('handoff-given', { childPid: handoff.childPid, stateMs: performance.now() - from });
    void handoff.outcome.then((outcome) => record('handoff-outcome', { childPid: handoff.childPid, outcome, ms: performance.now() - from }));
  });
}

const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(env.PORT ?? 0) });
listener.serve(createServer(handle));

await ecdysis.ready();
const readyAt = performance.now();
record('serving', { generation: ecdysis.generation, startToReadyMs: readyAt, createToReadyMs: readyAt - createStartedAt });
setTimeout(() => record('memory', { generation: ecdysis.generation, ...process.memoryUsage() }), 500).unref();
process.on('exit', () => {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const kib = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]);
    record('exit-memory', { hwmKiB: kib('VmHWM'), rssKiB: kib('VmRSS') });
  } catch {
    // Best effort.
  }
});
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });

/** xorshift32: fast, deterministic, and bytes that look random. */
function generator(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
}

/** A position-dependent 32-bit fold (FNV-1a over words, then the tail bytes): cheap, and a moved or missing chunk changes it. */
function bufferChecksum(buffer) {
  const aligned = buffer.byteOffset % 4 === 0 ? buffer : Buffer.from(buffer);
  const words = new Uint32Array(aligned.buffer, aligned.byteOffset, Math.floor(aligned.length / 4));
  let h = 0x811c9dc5;
  for (let i = 0; i < words.length; i++) h = Math.imul(h ^ words[i], 0x01000193);
  for (let i = words.length * 4; i < aligned.length; i++) h = Math.imul(h ^ aligned[i], 0x01000193);
  return h >>> 0;
}

function buildBuffer(bytes) {
  const buffer = Buffer.allocUnsafe(bytes);
  const next = generator(0x9e3779b9);
  const words = new Uint32Array(buffer.buffer, buffer.byteOffset, Math.floor(bytes / 4));
  for (let i = 0; i < words.length; i++) words[i] = next();
  for (let i = words.length * 4; i < bytes; i++) buffer[i] = next() & 0xff;
  return { state: buffer, bytes, count: 1, checksum: bufferChecksum(buffer) };
}

function makeRecord(i, next) {
  return {
    id: i,
    name: `user-${i.toString(36).padStart(6, '0')}`,
    email: `user${i}@example.com`,
    score: (next() % 1_000_000) / 1000,
    active: i % 3 !== 0,
    tags: TAGS.slice(0, 1 + (i % 4)),
    created: 1_700_000_000_000 + i * 1_000,
  };
}

function recordChecksum(records) {
  let h = 0x811c9dc5;
  for (const r of records) {
    h = Math.imul(h ^ r.id, 0x01000193);
    h = Math.imul(h ^ Math.round(r.score * 1000), 0x01000193);
    h = Math.imul(h ^ (r.name.length + r.email.length * 31 + r.tags.length * 1009 + (r.active ? 7 : 0)), 0x01000193);
    h = Math.imul(h ^ (r.created % 0x7fffffff), 0x01000193);
  }
  return h >>> 0;
}

/** Records until their JSON text ('[' + records joined by ',' + ']') would pass `bytes`: its exact length is returned. */
function buildJson(bytes) {
  const next = generator(0x2545f491);
  const records = [];
  let length = 2;
  for (let i = 0; ; i++) {
    const r = makeRecord(i, next);
    const add = Buffer.byteLength(JSON.stringify(r)) + (records.length > 0 ? 1 : 0);
    if (length + add > bytes) break;
    records.push(r);
    length += add;
  }
  return { state: records, bytes: length, count: records.length, checksum: recordChecksum(records) };
}

/** Did the state arrive whole? Compared with what generation 0 built. */
function verify(value, want) {
  if (!want) return { verified: value === undefined, kind: 'none', ...(value === undefined ? {} : { problem: 'a state arrived, none was handed over' }) };
  if (value === undefined) return { verified: false, kind: want.kind, problem: 'no state arrived' };
  if (want.kind === 'buffer') {
    if (!Buffer.isBuffer(value)) return { verified: false, kind: want.kind, problem: `a ${typeof value} arrived, not a Buffer` };
    const checksum = bufferChecksum(value);
    const verified = value.length === want.bytes && checksum === want.checksum;
    return { verified, kind: want.kind, bytes: value.length, count: 1, checksum, ...(verified ? {} : { problem: `${value.length} bytes, checksum ${checksum}; expected ${want.bytes}, ${want.checksum}` }) };
  }
  if (!Array.isArray(value)) return { verified: false, kind: want.kind, problem: 'the JSON state is not an array' };
  const checksum = recordChecksum(value);
  const verified = value.length === want.count && checksum === want.checksum;
  return { verified, kind: want.kind, bytes: want.bytes, count: value.length, checksum, ...(verified ? {} : { problem: `${value.length} records, checksum ${checksum}; expected ${want.count}, ${want.checksum}` }) };
}
