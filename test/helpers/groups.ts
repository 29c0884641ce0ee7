/**
 * Worker groups (option `workers`) seen through the records of real
 * generations: a primary and its workers all write to the same pipe, and each
 * record says its generation, pid and (in a worker) its index.
 */
import { isAlive, waitUntil, type Generations, type Record_ } from './generations.ts';

/** Generation `gen`'s primary, once ready (its ready record says `role: 'primary'`). */
export function primary(g: Generations, gen: number): Promise<Record_> {
  return g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.role === 'primary', 60_000, `generation ${gen}'s primary ready`);
}

/** Generation `gen`'s workers 0 to count - 1, once each is ready. */
export function workersReady(g: Generations, gen: number, count: number): Promise<Record_[]> {
  return Promise.all(Array.from({ length: count }, (_, index) => g.waitFor((r) => r.type === 'ready' && r.gen === gen && r.worker === index, 60_000, `generation ${gen}'s worker ${index} ready`)));
}

/** SIGHUP generation `gen`'s primary; resolves once gen + 1's group serves and gen's primary and workers have exited. */
export async function upgradeGroup(g: Generations, gen: number, count: number): Promise<void> {
  const old = await primary(g, gen);
  const oldWorkers = await workersReady(g, gen, count);
  process.kill(old.pid, 'SIGHUP');
  await primary(g, gen + 1);
  await workersReady(g, gen + 1, count);
  for (const { pid } of [old, ...oldWorkers]) await waitUntil(() => !isAlive(pid), 30_000, `pid ${pid} of generation ${gen} exited`);
}
