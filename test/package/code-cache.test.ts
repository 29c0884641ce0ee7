/**
 * dist/index.js compiles the library's bundle (dist/core.cjs) with V8's code
 * cache (scripts/dist-templates/index.js). What users rely on: the library
 * loads and works whatever cache it finds (one for this Node, none, one made
 * by another Node or garbage), it never writes beside itself at run time, a
 * cache made by the application's compile cache directory is reused rather
 * than written at every start, and stack traces still point into core.cjs.
 * Each case runs in a Node of its own on a copy of dist/, so that no case sees
 * another's files.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, cpSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, truncateSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from '../helpers/generations.ts';

const execFileAsync = promisify(execFile);
const dist = join(repoRoot, 'dist');
const EXPORTS = ['Ecdysis', 'EcdysisError', 'ErrorCodes', 'TcpListener', 'isEcdysisError'];
/** A cache file for this Node: core-<build>-<core.cjs's size>-<its mtime>-<V8 version>-<arch>.cache. */
const THIS_NODE = new RegExp(`^core-[0-9a-f]{16}-\\d+-\\d+-${process.versions.v8.replace(/[.]/g, '\\.')}-${process.arch}\\.cache$`);
/** An odd size, which no code cache of V8's (a multiple of 8 bytes) has. */
const GARBAGE = 65_541;
const caches = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.cache'));
const compileCacheSupported = typeof (await import('node:module') as { getCompileCacheDir?: unknown }).getCompileCacheDir === 'function';

/** A copy of dist/ in a scratch package (importing the library loads nothing from node_modules). */
function copyOfDist(t: import('ava').ExecutionContext): string {
  const root = mkdtempSync(join(tmpdir(), 'ecdysis-code-cache-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  const copy = join(root, 'dist');
  cpSync(dist, copy, { recursive: true });
  cpSync(join(repoRoot, 'package.json'), join(root, 'package.json'));
  // The cache's name has core.cjs's size and modification time (ms): a copy of
  // core.cjs has another time, and would never read its cache. The copy gets a
  // whole second (exact in every timestamp format: cpSync's preserveTimestamps
  // can come back a nanosecond early, another millisecond), and its cache that name.
  const seconds = Math.floor(statSync(join(dist, 'core.cjs')).mtimeMs / 1000);
  utimesSync(join(copy, 'core.cjs'), seconds, seconds);
  for (const cache of caches(copy)) renameSync(join(copy, cache), join(copy, cache.replace(/^(core-[0-9a-f]+-\d+-)\d+-/, `$1${seconds * 1000}-`)));
  return copy;
}

/**
 * Imports `index` in a fresh Node and reports its exports' names, what it wrote
 * on stderr, and the sizes of the code caches V8 deserialized (its
 * --profile-deserialization flag prints one line for each).
 */
async function load(index: string, env: NodeJS.ProcessEnv = {}): Promise<{ names: string[]; stderr: string; deserialized: number[]; maxRssMiB: number }> {
  const code = `const m = await import(${JSON.stringify(index)}); process.stdout.write('\\nnames ' + JSON.stringify(Object.keys(m)) + '\\nmaxrss ' + process.resourceUsage().maxRSS + '\\n');`;
  const { stdout, stderr } = await execFileAsync(process.execPath, ['--profile-deserialization', '--input-type=module', '-e', code], { env: { ...process.env, NODE_COMPILE_CACHE: '', ...env } });
  const deserialized = [...stdout.matchAll(/\[Deserializing from (\d+) bytes/g)].map((m) => Number(m[1]));
  return { names: JSON.parse(/^names (.*)$/m.exec(stdout)![1]!) as string[], stderr, deserialized, maxRssMiB: Number(/^maxrss (\d+)$/m.exec(stdout)![1]) / 1024 };
}

test('the build leaves one code cache, named for its code and the Node that built it, and V8 takes it on that Node', async (t) => {
  const [cache, ...more] = caches(dist);
  t.deepEqual(more, [], `dist/ has ${caches(dist).join(', ')}`);
  const build = createHash('sha256').update(readFileSync(join(dist, 'core.cjs'))).digest('hex').slice(0, 16);
  t.regex(cache!, new RegExp(`^core-${build}-[\\w.-]+-${process.arch}\\.cache$`));
  const { names, stderr, deserialized } = await load(join(dist, 'index.js'));
  for (const name of EXPORTS) t.true(names.includes(name), name);
  t.is(stderr, '');
  if (THIS_NODE.test(cache!)) t.true(deserialized.includes(statSync(join(dist, cache!)).size), `V8 deserialized ${deserialized.join(', ')} bytes`);
  else t.log(`built by another Node (${cache}): this one compiles the library`);
});

test('a garbage cache, or none, only costs a compile: the same exports, no warning, nothing written beside the library', async (t) => {
  const copy = copyOfDist(t);
  const expected = (await load(join(dist, 'index.js'))).names;
  const [cache] = caches(copy);
  if (THIS_NODE.test(cache!)) {
    const copied = await load(join(copy, 'index.js'));
    t.true(copied.deserialized.includes(statSync(join(copy, cache!)).size), `the copy reads its cache: V8 deserialized ${copied.deserialized.join(', ')} bytes`);
  }
  writeFileSync(join(copy, cache!), Buffer.alloc(GARBAGE, 0x5a));
  const garbage = await load(join(copy, 'index.js'));
  t.deepEqual(garbage.names, expected);
  t.is(garbage.stderr, '');
  t.false(garbage.deserialized.includes(GARBAGE), `V8 deserialized ${garbage.deserialized.join(", ")} bytes`);
  t.deepEqual(readFileSync(join(copy, cache!)), Buffer.alloc(GARBAGE, 0x5a), 'the library does not rewrite its shipped cache');
  // One far larger than any cache of the library (512 MiB, sparse) is not read: the process never holds it.
  truncateSync(join(copy, cache!), 512 * 2 ** 20);
  const huge = await load(join(copy, 'index.js'));
  t.deepEqual(huge.names, expected);
  t.is(huge.stderr, '');
  t.true(huge.maxRssMiB < 256, `peak RSS ${huge.maxRssMiB.toFixed(0)} MiB`);
  rmSync(join(copy, cache!));
  const none = await load(join(copy, 'index.js'));
  t.deepEqual(none.names, expected);
  t.deepEqual(caches(copy), [], 'nothing written beside the library at run time');
});

test(`with Node's compile cache enabled and no shipped cache for this Node, the cache is written there once and reused${compileCacheSupported ? '' : ' (Node 22.1+: skipped here)'}`, async (t) => {
  if (!compileCacheSupported) return t.pass();
  const copy = copyOfDist(t);
  for (const file of caches(copy)) rmSync(join(copy, file));
  const cacheDir = mkdtempSync(join(tmpdir(), 'ecdysis-node-cc-'));
  t.teardown(() => rmSync(cacheDir, { recursive: true, force: true }));
  await load(join(copy, 'index.js'), { NODE_COMPILE_CACHE: cacheDir });
  // Node's own directory for this Node is a folder of the one given (v24.1.0-x64-<hash>-<uid>/).
  const ours = readdirSync(cacheDir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('/ecdysis'));
  t.is(ours.length, 1, readdirSync(cacheDir, { recursive: true, encoding: 'utf8' }).join(', '));
  const folder = join(cacheDir, ours[0]!);
  const written = readdirSync(folder);
  t.is(written.length, 1, written.join(', '));
  t.regex(written[0]!, THIS_NODE);
  const file = join(folder, written[0]!);
  const first = statSync(file);
  const { deserialized } = await load(join(copy, 'index.js'), { NODE_COMPILE_CACHE: cacheDir });
  t.true(deserialized.includes(first.size), `V8 deserialized ${deserialized.join(', ')} bytes`);
  const second = statSync(file);
  t.is(second.ino, first.ino, 'a cache V8 took is not written again');
  t.is(second.mtimeMs, first.mtimeMs);
  t.is(second.mode & 0o777, 0o600);
  writeFileSync(file, Buffer.alloc(1024, 1));
  await load(join(copy, 'index.js'), { NODE_COMPILE_CACHE: cacheDir });
  t.not(statSync(file).size, 1024, 'a cache V8 rejected is replaced');
  // Code this process would run: not read from a file that another user owns or may write.
  // (Another owner needs root to set up.)
  for (const [what, spoil] of [
    ['writable by others', () => chmodSync(file, 0o666)],
    ...(process.geteuid?.() === 0 ? [['owned by another user', () => chownSync(file, 65534, 65534)] as const] : []),
  ] as const) {
    spoil();
    const spoiled = statSync(file);
    const { deserialized: after } = await load(join(copy, 'index.js'), { NODE_COMPILE_CACHE: cacheDir });
    t.false(after.includes(spoiled.size), `${what}: V8 deserialized ${after.join(', ')} bytes`);
    const replaced = statSync(file);
    t.not(replaced.ino, spoiled.ino, `${what}: replaced by a file of this user's`);
    t.is(replaced.uid, process.geteuid!());
    t.is(replaced.mode & 0o777, 0o600);
  }
  // Nor written into a folder that others may write.
  rmSync(file);
  chmodSync(folder, 0o777);
  await load(join(copy, 'index.js'), { NODE_COMPILE_CACHE: cacheDir });
  t.deepEqual(readdirSync(folder), [], 'nothing written into a folder that others may write (nor a temporary file left)');
});

test('a stack trace from the library names core.cjs at the line and column of the code that threw', async (t) => {
  const code = `const { Ecdysis } = await import(${JSON.stringify(join(dist, 'index.js'))});
try { await Ecdysis.create({ upgradeTimeout: -1 }); } catch (err) { process.stdout.write(err.stack); }`;
  const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, NODE_COMPILE_CACHE: '' } });
  const frame = /at (?:\S+ \()?(\S*core\.cjs):(\d+):(\d+)/.exec(stdout);
  t.truthy(frame, stdout);
  const [, file, line, column] = frame!;
  const text = readFileSync(file!, 'utf8').split('\n')[Number(line) - 1]!.slice(Number(column) - 1);
  // The first frame is where the error was made: `new EcdysisError(` or a function returning one.
  t.true(/^(new \w+|\w+)\(/.test(text), `core.cjs at ${line}:${column}: ${text.slice(0, 80)}`);
});

test('an error from the library that nobody catches shows one short line of the code that threw, not a whole line of the bundle', async (t) => {
  // Node prints the source line of an uncaught error under its location; the bundle's lines were up to 90 kB.
  const code = `const { Ecdysis } = await import(${JSON.stringify(join(dist, 'index.js'))});
await Ecdysis.create({ upgradeTimeout: -1 });`;
  const error = await t.throwsAsync(execFileAsync(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, NODE_COMPILE_CACHE: '' } }));
  const stderr = (error as Error & { stderr: string }).stderr;
  t.regex(stderr, /ERR_ECDYSIS_INVALID_OPTION/);
  const lines = stderr.split('\n');
  const at = lines.findIndex((line) => /core\.cjs:\d+$/.test(line));
  t.true(at >= 0, stderr.slice(0, 2000));
  t.true(lines[at + 1]!.length <= 200, `the line shown is ${lines[at + 1]!.length} characters long`);
});

/** Processes whose command line names `path`. */
function processesRunning(path: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(path)) pids.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return pids;
}

test("the writer's --warm cache is that of a whole upgrade: more than loading compiles, and no generation of it is left running", async (t) => {
  const copy = copyOfDist(t);
  // The addon, where the library looks for it from the copy's package root.
  symlinkSync(join(repoRoot, 'build'), join(copy, '..', 'build'));
  const writer = join(copy, 'code-cache-writer.cjs');
  for (const file of caches(copy)) rmSync(join(copy, file));
  const { stdout } = await execFileAsync(process.execPath, [writer, '--warm'], { encoding: 'utf8', timeout: 60_000 });
  for (const name of EXPORTS) t.true((JSON.parse(stdout) as string[]).includes(name), name);
  t.deepEqual(processesRunning(writer), [], 'every generation of the warm-up exited before its stdout closed');
  const [cache, ...more] = caches(copy);
  t.true(THIS_NODE.test(cache ?? '') && more.length === 0, caches(copy).join(', '));
  const warm = statSync(join(copy, cache!)).size;
  await execFileAsync(process.execPath, [writer], { encoding: 'utf8' });
  const loadOnly = statSync(join(copy, cache!)).size;
  t.true(warm > 1.5 * loadOnly, `--warm ${warm} bytes, loading only ${loadOnly}`);
  t.false(readdirSync(copy).some((f) => f.endsWith('.tmp')), 'no temporary file left');
});

test('a core.cjs changed after the build (same length, other code) never meets the cache made for the old code', async (t) => {
  const copy = copyOfDist(t);
  const core = join(copy, 'core.cjs');
  const before = readFileSync(core, 'latin1');
  const original = '"this generation has not called ready() yet"';
  t.true(before.includes(original));
  writeFileSync(core, before.replace(original, '"THIS GENERATION HAS NOT CALLED READY() YET"'), 'latin1');
  t.is(statSync(core).size, before.length);
  const code = `const { ErrorCodes } = await import(${JSON.stringify(join(copy, 'index.js'))}); process.stdout.write(ErrorCodes.ERR_ECDYSIS_NOT_READY);`;
  const { stdout } = await execFileAsync(process.execPath, ['--input-type=module', '-e', code], { env: { ...process.env, NODE_COMPILE_CACHE: '' } });
  t.is(stdout, 'THIS GENERATION HAS NOT CALLED READY() YET');
});
