/**
 * compileCache: the next generation starts with Node's module compile cache
 * (Node 22.1+), and writes it once ready; before 22.1, a coded warning and
 * generations that start as before. Runs on whichever Node runs the suite
 * (CI: 20, 22 and 24).
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { compileCacheSupported } from '../../src/internal/compile-cache.ts';
import { isAlive, startGenerations, upgrades, waitUntil } from '../helpers/generations.ts';

function filesUnder(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

test(`compileCache (Node ${process.versions.node}): ${compileCacheSupported() ? 'each next generation compiles from the cache an earlier one wrote' : 'a coded warning, and upgrades as before'}`, async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'ecdysis-cc-')), 'cache');
  t.teardown(() => rmSync(join(dir, '..'), { recursive: true, force: true }));
  const g = startGenerations(t, 'line-service.ts', { FIXTURE_COMPILE_CACHE: dir });
  await g.ready(0);
  const [first] = await upgrades(g, 1);
  if (compileCacheSupported()) {
    // Generation 1 writes what it compiled once ready, while it serves: generation 2 starts from it.
    await waitUntil(() => filesUnder(dir).length > 0, 30_000, 'the cache written by generation 1');
    t.true(isAlive(first!), 'written before generation 1 exited');
  }
  const pids = [first, ...(await upgrades(g, 1, 1))];
  t.is(pids.length, 2);
  const seen = g.records.filter((r) => r.type === 'compile-cache');
  if (!compileCacheSupported()) {
    t.regex(g.stderr.join(''), /\[ECDYSIS_COMPILE_CACHE_UNSUPPORTED\] Warning: options\.compileCache needs Node 22\.1 or later/);
    t.deepEqual(seen.map((r) => r.dir), [null, null, null]);
    t.deepEqual(filesUnder(dir), []);
    return;
  }
  // Generation 0 was started by the test, without it; every later one with it.
  t.deepEqual(seen.map((r) => [r.gen, r.env]), [[0, null], [1, dir], [2, dir]]);
  t.deepEqual(seen.slice(1).map((r) => r.dir !== null && (r.dir as string).startsWith(dir)), [true, true]);
  t.notRegex(g.stderr.join(''), /ECDYSIS_COMPILE_CACHE_UNSUPPORTED/);
});
