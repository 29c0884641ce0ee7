/**
 * The package's install script (scripts/install.cjs) builds or fetches the
 * addon on Linux only: off Linux (process.platform faked by a preload) it
 * runs nothing and succeeds. It runs in a scratch package whose node-gyp-build
 * is a stub that records being called, so no real build is ever started here.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fixturesDir, repoRoot } from '../helpers/generations.ts';

const execFileAsync = promisify(execFile);

function scratchPackage(t: import('ava').ExecutionContext): { dir: string; called: () => boolean } {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-install-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'scripts'));
  cpSync(join(repoRoot, 'scripts/install.cjs'), join(dir, 'scripts/install.cjs'));
  const stub = join(dir, 'node_modules/node-gyp-build');
  mkdirSync(stub, { recursive: true });
  writeFileSync(join(stub, 'package.json'), JSON.stringify({ name: 'node-gyp-build', version: '0.0.0' }));
  writeFileSync(join(stub, 'bin.js'), `require('node:fs').writeFileSync(${JSON.stringify(join(dir, 'called'))}, process.platform);\n`);
  return { dir, called: () => existsSync(join(dir, 'called')) };
}

/** A stub dist/code-cache-writer.cjs that records each run's arguments (and whether node-gyp-build ran first); `fail`: the forms it fails. */
function stubWriter(dir: string, fail: string[] = []): () => { args: string[]; afterAddon: boolean }[] {
  mkdirSync(join(dir, 'dist'));
  const runs = join(dir, 'writer-runs');
  writeFileSync(
    join(dir, 'dist/code-cache-writer.cjs'),
    `const fs = require('node:fs');
const args = process.argv.slice(2);
fs.appendFileSync(${JSON.stringify(runs)}, JSON.stringify({ args, afterAddon: fs.existsSync(${JSON.stringify(join(dir, 'called'))}) }) + '\\n');
if (${JSON.stringify(fail)}.includes(args.join(' '))) { process.stderr.write('no loopback here\\n'); process.exit(1); }
process.stdout.write('[]');
`,
  );
  return () => (existsSync(runs) ? readFileSync(runs, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as { args: string[]; afterAddon: boolean }) : []);
}

test('on Linux the install script writes the code cache of an upgrade once the addon is there; else, or with ECDYSIS_LOCAL=1, that of loading', async (t) => {
  const { dir } = scratchPackage(t);
  const runs = stubWriter(dir);
  await execFileAsync(process.execPath, ['scripts/install.cjs'], { cwd: dir });
  t.deepEqual(runs(), [{ args: ['--warm'], afterAddon: true }]);

  const failing = scratchPackage(t);
  const failingRuns = stubWriter(failing.dir, ['--warm']);
  const { stdout } = await execFileAsync(process.execPath, ['scripts/install.cjs'], { cwd: failing.dir });
  t.deepEqual(failingRuns(), [{ args: ['--warm'], afterAddon: true }, { args: [], afterAddon: true }]);
  t.notRegex(stdout, /no code cache/, 'the second form wrote one');

  const local = scratchPackage(t);
  const localRuns = stubWriter(local.dir);
  await execFileAsync(process.execPath, ['scripts/install.cjs'], { cwd: local.dir, env: { ...process.env, ECDYSIS_LOCAL: '1' } });
  t.deepEqual(localRuns(), [{ args: [], afterAddon: true }]);

  const darwin = scratchPackage(t);
  const darwinRuns = stubWriter(darwin.dir, ['']);
  const darwinOut = await execFileAsync(process.execPath, ['--require', join(fixturesDir, 'fake-platform.cjs'), 'scripts/install.cjs'], { cwd: darwin.dir, env: { ...process.env, FAKE_PLATFORM: 'darwin' } });
  t.deepEqual(darwinRuns(), [{ args: [], afterAddon: false }]);
  t.regex(darwinOut.stdout, /ecdysis: no code cache written \(no loopback here\)/);
});

for (const platform of ['darwin', 'win32', 'freebsd']) {
  test(`on ${platform} the install script builds nothing and succeeds`, async (t) => {
    const { dir, called } = scratchPackage(t);
    const { stdout } = await execFileAsync(process.execPath, ['--require', join(fixturesDir, 'fake-platform.cjs'), 'scripts/install.cjs'], {
      cwd: dir,
      env: { ...process.env, FAKE_PLATFORM: platform },
    });
    t.false(called(), 'node-gyp-build was not run');
    t.regex(stdout, new RegExp(`no native addon to build on ${platform}`));
  });
}

test('on Linux the install script is node-gyp-build, as before (prebuild first, else a build from source)', async (t) => {
  const { dir, called } = scratchPackage(t);
  await execFileAsync(process.execPath, ['scripts/install.cjs'], { cwd: dir });
  t.true(called(), 'node-gyp-build was run');
  t.is(readFileSync(join(dir, 'called'), 'utf8'), 'linux');
});

test('package.json: the install script is that one, it ships, and npm is told not to run node-gyp by itself', (t) => {
  const manifest = JSON.parse(readFileSync(join(repoRoot, 'package.json'), 'utf8')) as { scripts: Record<string, string>; gypfile: unknown; files: string[] };
  t.is(manifest.scripts.install, 'node scripts/install.cjs');
  // npm runs `node-gyp rebuild` for a package with a binding.gyp unless it has an install or preinstall script, or gypfile is false.
  t.is(manifest.gypfile, false);
  t.is(manifest.scripts.preinstall, undefined);
  t.true(manifest.files.includes('scripts/install.cjs'));
});
