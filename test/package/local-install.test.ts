/**
 * The package installed where its addon cannot be built: `npm pack`, then
 * `npm install` of the tarball with its install scripts, in a process tree
 * that believes it runs on macOS (process.platform faked through NODE_OPTIONS,
 * npm included). Nothing is built or attempted (no node-gyp, no build/), the
 * install succeeds, and a service written against the package runs there in
 * local mode without ever loading the addon. Only process.platform is faked:
 * the kernel, and what Node does with sockets, are Linux's.
 */
import test from 'ava';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fixturesDir } from '../helpers/generations.ts';
import { consumer, exited, type Consumer } from '../helpers/package.ts';

const darwin = { FAKE_PLATFORM: 'darwin', NODE_OPTIONS: `--require ${join(fixturesDir, 'fake-platform.cjs')}` };

let project: Consumer;
let packDir: string;

test.before(async () => {
  packDir = mkdtempSync(join(tmpdir(), 'ecdysis-pack-'));
  const { pack } = await import('../helpers/package.ts');
  const packed = await pack(packDir);
  project = await consumer(packed.tarball, [], { scripts: true, env: darwin });
});

test.after.always(() => {
  project?.remove();
  if (packDir) rmSync(packDir, { recursive: true, force: true });
});

test('npm install on "darwin" runs the install script, which builds nothing; no node-gyp ran', (t) => {
  t.log(project.installOutput.trim());
  t.regex(project.installOutput, /no native addon to build on darwin/);
  t.notRegex(project.installOutput, /gyp/i, 'no node-gyp output');
  t.false(existsSync(join(project.dir, 'node_modules/ecdysis/build')), 'nothing was built');
});

test('on "darwin" the installed package serves in local mode: HTTP answered, upgrade refused with its code, the addon never loaded', async (t) => {
  project.write(
    'local.mjs',
    `import { Ecdysis } from 'ecdysis';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
const ecdysis = await Ecdysis.create({ stopOn: ['SIGTERM'] });
const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
web.serve(createServer((req, res) => res.end('local ' + process.platform)));
await ecdysis.ready();
const body = await (await fetch('http://127.0.0.1:' + web.port + '/')).text();
const refusal = await ecdysis.upgrade().then(() => 'upgraded', (err) => err.code);
const seqpacket = await ecdysis.listenUnixSeqpacket('/tmp/never.sock').then(() => 'listening', (err) => err.code);
const addon = /ecdysis[^/]*\\.node/.test(readFileSync('/proc/self/maps', 'utf8'));
console.log(JSON.stringify({ body, refusal, seqpacket, addon, state: ecdysis.state }));
ecdysis.stop();
await ecdysis.drain({ timeout: 5000 });
`,
  );
  const child = project.start(['local.mjs']);
  t.is(await exited(child), 0, child.output());
  const result = JSON.parse(child.output().trim().split('\n').at(-1)!) as Record<string, unknown>;
  t.deepEqual(result, { body: 'local darwin', refusal: 'ERR_ECDYSIS_UPGRADE_UNSUPPORTED', seqpacket: 'ERR_ECDYSIS_UNSUPPORTED', addon: false, state: 'ready' });
});

test.serial("the install script writes the library's code cache for the Node that installs it (dist/index.js compiles with it)", async (t) => {
  const installed = join(project.dir, 'node_modules/ecdysis/dist');
  const caches = () => readdirSync(installed).filter((f) => f.endsWith('.cache'));
  const thisNode = (f: string) => f.endsWith(`-${process.versions.v8}-${process.arch}.cache`);
  t.true(caches().some(thisNode), `after npm install: ${caches().join(', ')}`);
  for (const file of caches()) rmSync(join(installed, file));
  await project.node(['node_modules/ecdysis/scripts/install.cjs']);
  t.deepEqual(caches().filter(thisNode).length, 1, `after the install script: ${caches().join(', ')}`);
});
