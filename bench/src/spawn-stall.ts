/**
 * What starting a child costs the loop that starts it, by heap size: Node's
 * child_process.spawn (libuv's uv_spawn: fork + exec on Linux; the kernel copies
 * the page tables of every mapped page, and the loop waits until the exec) next
 * to the addon's spawnProcess (posix_spawn: clone(CLONE_VM | CLONE_VFORK), no
 * copy), and the same on a thread of the addon (spawnProcessAsync: the loop only
 * prepares the start and gets the result later; what the library uses). The same
 * child each way, laid out as an upgrade lays it out: fds 0-2
 * inherited, fd 3 a Unix stream socket, fd 4 a seqpacket socket, fd 5 a TCP
 * listener; it exits at once (`node -e 0`: its start-up is not what is measured).
 *
 * For each ballast size a fresh process allocates that many MiB of live data (a
 * quarter as small JS objects on the V8 heap, the rest as Buffers, every page
 * touched), then starts ROUNDS children each way, interleaved, one at a time:
 * with --busy=N, N CPU-bound processes (`sh -c 'while :; do :; done'`) run
 * meanwhile, as a serving generation under load would find the cores;
 * the synchronous duration of the call (made from a timer callback), and
 * monitorEventLoopDelay's max over the 33 ms around it (the loop is otherwise idle). Each child is
 * waited for (and reaped) before the next.
 *
 *   node --import tsx bench/src/spawn-stall.ts [--sizes=50,200,800] [--rounds=10] [--busy=0]
 *
 * Standalone (not part of `npm run bench`): it needs the addon built at the
 * repository root (`npm install` there).
 */
import { spawn as nodeSpawn, execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

const root = fileURLToPath(new URL('../../', import.meta.url));
const require = createRequire(import.meta.url);

interface Addon {
  socketPair(type: 'stream' | 'seqpacket'): [number, number];
  close(fd: number): void;
  spawnProcess(file: string, argv: string[], env: string[], cwd: string | null, fds: number[]): { pid: number; pidfd: number };
  spawnProcessAsync(file: string, argv: string[], env: string[], cwd: string | null, fds: number[], done: (err: Error | null, started?: { pid: number; pidfd: number }) => void): void;
  ProcessWatch: new (pidfd: number, pid: number, callbacks: { onExit(code: number | null, signal: number | null): void }) => { close(): void };
}

type Way = 'node' | 'addon' | 'thread';

interface Sample {
  syncMs: number;
  delayMaxMs: number;
}

const arg = (name: string, fallback: string) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

function ballast(mib: number): unknown[] {
  const kept: unknown[] = [];
  // A quarter as JS objects (about 40 bytes each with their array slot)...
  const objects = Math.floor((mib * 1024 * 1024) / 4 / 40);
  const list: { a: number; b: number }[] = new Array(objects);
  for (let i = 0; i < objects; i++) list[i] = { a: i, b: i * 2 };
  kept.push(list);
  // ...the rest as Buffers, zero-filled (each page touched).
  const rest = mib - Math.round(mib / 4);
  for (let i = 0; i < rest; i++) kept.push(Buffer.alloc(1024 * 1024, 1));
  return kept;
}

async function measure(start: () => Promise<void>): Promise<Sample> {
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  histogram.enable();
  await new Promise((resolve) => setTimeout(resolve, 5));
  histogram.reset();
  // From a timer callback: a block in the same turn as reset() is not seen by the histogram.
  const { syncMs, exited } = await new Promise<{ syncMs: number; exited: Promise<void> }>((resolve) =>
    setTimeout(() => {
      const before = performance.now();
      const exited = start();
      resolve({ syncMs: performance.now() - before, exited });
    }, 3),
  );
  await new Promise((resolve) => setTimeout(resolve, 30));
  histogram.disable();
  await exited;
  return { syncMs, delayMaxMs: histogram.max / 1e6 };
}

async function child(mib: number, rounds: number): Promise<void> {
  const addon = require('node-gyp-build')(root) as Addon;
  const kept = ballast(mib);
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const listenFd = (listener as unknown as { _handle: { fd: number } })._handle.fd;
  const env = Object.entries(process.env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  const args = ['-e', '0'];

  const viaNode = () => {
    const pair = addon.socketPair('seqpacket');
    const started = nodeSpawn(process.execPath, args, { stdio: ['inherit', 'inherit', 'inherit', 'pipe', pair[1], listenFd] });
    addon.close(pair[1]);
    return new Promise<void>((resolve) =>
      started.on('exit', () => {
        started.stdio[3]?.destroy();
        addon.close(pair[0]);
        resolve();
      }),
    );
  };
  const watched = (pid: number, pidfd: number, pair: [number, number], control: [number, number]) =>
    new Promise<void>((resolve) => {
      new addon.ProcessWatch(pidfd, pid, {
        onExit: () => {
          addon.close(pair[0]);
          addon.close(control[0]);
          resolve();
        },
      });
    });
  const viaAddon = () => {
    const pair = addon.socketPair('seqpacket');
    const control = addon.socketPair('stream');
    const { pid, pidfd } = addon.spawnProcess(process.execPath, [process.execPath, ...args], env, null, [0, 1, 2, control[1], pair[1], listenFd]);
    addon.close(pair[1]);
    addon.close(control[1]);
    return watched(pid, pidfd, pair, control);
  };
  const viaThread = () => {
    const pair = addon.socketPair('seqpacket');
    const control = addon.socketPair('stream');
    const exited = new Promise<void>((resolve, reject) => {
      addon.spawnProcessAsync(process.execPath, [process.execPath, ...args], env, null, [0, 1, 2, control[1], pair[1], listenFd], (err, started) => {
        if (err || !started) return reject(err);
        resolve(watched(started.pid, started.pidfd, pair, control));
      });
    });
    addon.close(pair[1]);
    addon.close(control[1]);
    return exited;
  };

  const results: Record<Way, Sample[]> = { node: [], addon: [], thread: [] };
  // One of each first, not counted: each path's first-call costs (loading child_process, the addon's lookups).
  await measure(viaNode);
  await measure(viaAddon);
  await measure(viaThread);
  for (let i = 0; i < rounds; i++) {
    results.node.push(await measure(viaNode));
    results.addon.push(await measure(viaAddon));
    results.thread.push(await measure(viaThread));
  }
  const rssMiB = Math.round(process.memoryUsage().rss / 1024 / 1024);
  listener.close();
  process.stdout.write(`${JSON.stringify({ mib, rssMiB, results })}\n`);
  void kept;
}

async function main(): Promise<void> {
  if (process.argv.includes('--child')) {
    return child(Number(arg('mib', '0')), Number(arg('rounds', '10')));
  }
  const sizes = arg('sizes', '50,200,800').split(',').map(Number);
  const rounds = Number(arg('rounds', '10'));
  const busy = Number(arg('busy', '0'));
  const rows: string[] = [
    '| ballast | RSS | child_process.spawn, sync ms (median / max) | loop delay max, ms | addon spawnProcess, sync ms | loop delay max, ms | addon spawnProcessAsync, sync ms | loop delay max, ms |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  // CPU-bound neighbours, killed (by pid) whatever happens; each measurement is bounded by its timeout.
  const loops = Array.from({ length: busy }, () => nodeSpawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  try {
    for (const mib of sizes) {
      const out = execFileSync(process.execPath, ['--max-old-space-size=8192', '--import', 'tsx', fileURLToPath(import.meta.url), '--child', `--mib=${mib}`, `--rounds=${rounds}`], {
        cwd: root,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'inherit'],
        timeout: 300_000,
      });
      const { rssMiB, results } = JSON.parse(out.trim().split('\n').pop()!) as { rssMiB: number; results: Record<Way, Sample[]> };
      const cell = (samples: Sample[], key: keyof Sample) => {
        const values = samples.map((s) => s[key]);
        return `${median(values).toFixed(2)} / ${Math.max(...values).toFixed(2)}`;
      };
      const ways = (['node', 'addon', 'thread'] as const).map((way) => `${cell(results[way], 'syncMs')} | ${cell(results[way], 'delayMaxMs')}`);
      rows.push(`| ${mib} MiB | ${rssMiB} MiB | ${ways.join(' | ')} |`);
    }
  } finally {
    for (const loop of loops) loop.kill('SIGKILL');
  }
  process.stdout.write(`${rows.join('\n')}\n`);
}

await main();
