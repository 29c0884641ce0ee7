/**
 * Two builds of the library side by side, in one run, interleaved: the cost a
 * restructuring must not raise.
 *
 *   node --import tsx compare.ts --baseline DIR [--current DIR] [--runs 30] [--upgrades 20]
 *
 * DIR is a checkout whose dist/ is built (`npm install` there); --current is
 * the repository this bench belongs to by default. Measured for each, in
 * alternating order:
 *   - `node` + `import` of its dist/index.js, spawn to exit (runs);
 *   - trigger (SIGHUP) -> child-ready of a one-listener app (upgrades in a row,
 *     the old generation's own elapsedMs), with probation 0 so that each old
 *     generation is gone before the next upgrade;
 *   - the size of dist/index.js.
 * Prints a Markdown table (median, min-max) and writes it to results/tmp/compare.md.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { exited, isAlive } from './src/lib/children.ts';
import { spread, type Spread } from './src/lib/stats.ts';

const { values } = parseArgs({
  options: {
    baseline: { type: 'string' },
    current: { type: 'string', default: fileURLToPath(new URL('..', import.meta.url)) },
    runs: { type: 'string', default: '30' },
    upgrades: { type: 'string', default: '20' },
  },
});
if (!values.baseline) throw new Error('--baseline DIR is required (a checkout with dist/ built)');
const builds = [
  { id: 'baseline', root: resolve(values.baseline) },
  { id: 'current', root: resolve(values.current!) },
];
const runs = Number(values.runs);
const upgrades = Number(values.upgrades);

const APP = `
import { createServer } from 'node:http';
const { Ecdysis } = await import(process.env.LIBRARY);
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM'], probation: 0 });
const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
web.serve(createServer((_q, s) => s.end('ok')));
ecdysis.events().subscribe((e) => {
  if (e.type === 'child-ready') process.stdout.write(JSON.stringify({ pid: process.pid, childPid: e.childPid, elapsedMs: e.elapsedMs }) + '\\n');
});
await ecdysis.ready();
process.stdout.write(JSON.stringify({ ready: process.pid }) + '\\n');
await ecdysis.exit;
await ecdysis.drain({ timeout: 5000 });
`;

const work = mkdtempSync(join(tmpdir(), 'ecdysis-compare-'));
const appFile = join(work, 'app.mjs');
writeFileSync(appFile, APP);

async function importOnce(root: string): Promise<number> {
  const url = new URL('dist/index.js', `file://${root}/`).href;
  const t0 = performance.now();
  await exited(spawn(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(url)});`], { cwd: root, stdio: 'ignore' }));
  return performance.now() - t0;
}

/** One app of `root`, upgraded `count` times in a row: each child-ready's elapsedMs. */
async function upgradeRun(root: string, count: number): Promise<number[]> {
  const child = spawn(process.execPath, [appFile], {
    cwd: root,
    env: { ...process.env, LIBRARY: new URL('dist/index.js', `file://${root}/`).href },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const records: Record<string, number>[] = [];
  let waiting: (() => void) | undefined;
  let buffered = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    buffered += chunk;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) !== -1) {
      records.push(JSON.parse(buffered.slice(0, newline)) as Record<string, number>);
      buffered = buffered.slice(newline + 1);
      waiting?.();
    }
  });
  const next = async (match: (r: Record<string, number>) => boolean): Promise<Record<string, number>> => {
    for (;;) {
      const found = records.find(match);
      if (found) return found;
      await new Promise<void>((r) => (waiting = r));
    }
  };
  const timings: number[] = [];
  let current = (await next((r) => r.ready !== undefined)).ready!;
  for (let i = 0; i < count; i++) {
    process.kill(current, 'SIGHUP');
    const ready = await next((r) => r.pid === current && r.childPid !== undefined);
    timings.push(ready.elapsedMs!);
    const old = current;
    current = (await next((r) => r.ready === ready.childPid)).ready!;
    while (isAlive(old)) await new Promise((r) => setTimeout(r, 10));
  }
  process.kill(current, 'SIGTERM');
  while (isAlive(current)) await new Promise((r) => setTimeout(r, 10));
  await exited(child);
  return timings;
}

const imports = new Map(builds.map((b) => [b.id, [] as number[]]));
const toReady = new Map(builds.map((b) => [b.id, [] as number[]]));
for (let run = 0; run < runs; run++) {
  const order = run % 2 === 0 ? builds : [...builds].reverse();
  for (const b of order) imports.get(b.id)!.push(await importOnce(b.root));
}
// Upgrades in rounds of 5, alternating, so that the machine's drift touches both alike.
for (let done = 0; done < upgrades; done += 5) {
  const order = (done / 5) % 2 === 0 ? builds : [...builds].reverse();
  for (const b of order) toReady.get(b.id)!.push(...(await upgradeRun(b.root, Math.min(5, upgrades - done))));
}

const fmt = (s: Spread) => `${s.median.toFixed(1)} (${s.min.toFixed(1)}–${s.max.toFixed(1)})`;
const commit = (root: string) => {
  try {
    return execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    return '?';
  }
};
const lines = [
  `| figure | ${builds.map((b) => `${b.id} (${b.root}, ${commit(b.root)})`).join(' | ')} |`,
  `| --- | ${builds.map(() => '---:').join(' | ')} |`,
  `| \`node\` + import, spawn to exit, ms (${runs} runs each, interleaved) | ${builds.map((b) => fmt(spread(imports.get(b.id)!))).join(' | ')} |`,
  `| SIGHUP → child-ready, 1 listener, ms (${upgrades} upgrades each, rounds of 5 alternating) | ${builds.map((b) => fmt(spread(toReady.get(b.id)!))).join(' | ')} |`,
  `| dist/index.js, bytes | ${builds.map((b) => statSync(join(b.root, 'dist', 'index.js')).size.toLocaleString('en')).join(' | ')} |`,
];
const out = fileURLToPath(new URL('./results/tmp/', import.meta.url));
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'compare.md'), `${lines.join('\n')}\n`);
process.stdout.write(`${lines.join('\n')}\n`);
