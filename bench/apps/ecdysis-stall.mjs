/**
 * The ecdysis HTTP app with a ballast in generation 0 (BALLAST_MIB of live data:
 * a quarter as small JS objects, the rest as Buffers with every page touched) that measures
 * its own event-loop delay (how late a 1 ms interval timer fires): the max
 * from 700 ms after ready() to the upgrade's trigger ('requested'), and the max from the
 * trigger to the end of its drain ('drained'), recorded as 'stall' when the
 * drain ends. SIGHUP upgrades; ECDYSIS_SPAWN=node makes the library start the
 * next generation with child_process.spawn instead of the addon.
 */
import { createServer } from 'node:http';
import { handle } from './handler.mjs';
import { record } from './lifecycle.mjs';

const { Ecdysis } = await import('../../dist/index.js');
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
// Generation 0 only: the new generation's own start-up then competes little for the 2 cores, and
// what the serving loop shows is the library's work on it.
const mib = ecdysis.generation === 0 ? Number(process.env.BALLAST_MIB ?? 0) : 0;
const kept = [];
const objects = Math.floor((mib * 1024 * 1024) / 4 / 40);
const list = new Array(objects);
for (let i = 0; i < objects; i++) list[i] = { a: i, b: i * 2 };
kept.push(list);
for (let i = 0; i < mib - Math.round(mib / 4); i++) kept.push(Buffer.alloc(1024 * 1024, 1));
const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 0) });
listener.serve(createServer(handle));
await ecdysis.ready();
// The event-loop delay as a 1 ms timer sees it: how late each tick comes. Not
// monitorEventLoopDelay: after its reset(), a block in the same turn is never
// recorded, and the spawn runs in the turn of the 'requested' event.
let last = performance.now();
let max = 0;
setInterval(() => {
  const now = performance.now();
  max = Math.max(max, now - last - 1);
  last = now;
}, 1).unref();
// Outside: from 700 ms after ready() on (the ballast's first major GCs are over by then).
setTimeout(() => (max = 0), 700).unref();
let outsideMs = 0;
let requestedAt = 0;
ecdysis.events().subscribe((event) => {
  if (event.type === 'requested') {
    outsideMs = max;
    max = 0;
    requestedAt = Date.now();
  } else if (event.type === 'drained') {
    record('stall', { generation: ecdysis.generation, outsideMs, windowMs: max, windowLengthMs: Date.now() - requestedAt, rssMiB: Math.round(process.memoryUsage().rss / 1048576) });
  }
});
record('serving', { generation: ecdysis.generation });
await ecdysis.exit;
await ecdysis.drain({ timeout: 10_000, idleTimeout: 0 });
void kept;
