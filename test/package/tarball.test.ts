/**
 * The package as users get it, on the Node running this test (CI runs the
 * suite on Node 20, 22 and 24): `npm pack`, installed into a fresh project
 * with --ignore-scripts. It loads its prebuilt addon and serves; strict
 * TypeScript consumers type-check against its declarations with TypeScript
 * 5.9 and the newest TypeScript, under `nodenext` and `bundler` resolution;
 * examples/ and the README's quick start type-check there as a user's code;
 * the quick start runs and serves; require('ecdysis') works or says why not.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from '../helpers/generations.ts';
import { consumer, exited, freePort, getWhenUp, pack, type Consumer, type PackResult } from '../helpers/package.ts';

const execFileAsync = promisify(execFile);

let packed: PackResult;
let project: Consumer;
let packDir: string;

test.before(async () => {
  packDir = mkdtempSync(join(tmpdir(), 'ecdysis-pack-'));
  packed = await pack(packDir);
  project = await consumer(packed.tarball, [
    '@types/node@^20',
    // Two TypeScripts side by side, called by path (both name their binary tsc).
    'ts59@npm:typescript@~5.9.3',
    'tslatest@npm:typescript@latest',
    // What examples/ import besides ecdysis.
    'express@^5',
    '@types/express@^5',
    'fastify@^5',
    'ws@^8',
    '@types/ws@^8',
    '@grpc/grpc-js@^1.14',
    '@grpc/proto-loader@^0.8',
    'prom-client@^15',
  ]);
});

test.after.always(() => {
  project?.remove();
  if (packDir) rmSync(packDir, { recursive: true, force: true });
});

const compilers = { '5.9': 'node_modules/ts59/bin/tsc', latest: 'node_modules/tslatest/bin/tsc' } as const;

async function tsc(compiler: keyof typeof compilers, config: string): Promise<string> {
  try {
    // A type-check of every example takes a while on a busy machine: the bound is generous.
    await project.node([compilers[compiler], '-p', config], { timeoutMs: 240_000 });
    return '';
  } catch (err) {
    const { stdout, killed, signal } = err as { stdout?: string; killed?: boolean; signal?: string };
    return `${stdout ?? ''}${(err as Error).message}${killed ? ` (killed by ${signal} at the 240 s bound)` : ''}`;
  }
}

test('the tarball holds the build, the prebuilds and the loader, nothing stale', (t) => {
  t.log(`${packed.tarball.split('/').at(-1)}: ${packed.size} bytes, ${packed.files.length} files`);
  for (const file of [
    'dist/index.js',
    'dist/index.d.ts',
    'require.cjs',
    'binding.gyp',
    'prebuilds/linux-x64/ecdysis.napi.glibc.node',
    'prebuilds/linux-x64/ecdysis.napi.musl.node',
    'prebuilds/linux-arm64/ecdysis.napi.glibc.node',
  ]) {
    t.true(packed.files.includes(file), file);
  }
  // No code cache either: one fits only the Node that made it; the install script makes one for its Node.
  t.deepEqual(packed.files.filter((f) => f.endsWith('.map') || f.endsWith('.cache') || f.startsWith('src/') || f.startsWith('build/')), []);
  t.true(packed.files.includes('dist/code-cache-writer.cjs'));
  // A size for the README to quote: well under a megabyte with three prebuilds.
  t.true(packed.size < 1024 * 1024, `${packed.size} bytes`);
});

test('installed with --ignore-scripts, it loads its prebuilt addon and serves HTTP', async (t) => {
  t.false(existsSync(join(project.dir, 'node_modules/ecdysis/build')), 'nothing was built at install');
  project.write(
    'serve.mjs',
    `import { createServer } from 'node:http';
import { Ecdysis } from 'ecdysis';
const ecdysis = await Ecdysis.create();
const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: 0 });
web.serve(createServer((req, res) => res.end('served by ' + process.version)));
await ecdysis.ready();
console.log(JSON.stringify({ port: web.address().port }));
const { mode } = await ecdysis.exit;
await ecdysis.drain({ timeout: 5_000 });
console.log(JSON.stringify({ mode }));
`,
  );
  const child = project.start(['serve.mjs']);
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no port within 30 s: ${child.output()}`)), 30_000);
    child.stdout!.on('data', () => {
      const match = /"port":(\d+)/.exec(child.output());
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', () => reject(new Error(`exited: ${child.output()}`)));
  });
  const response = await getWhenUp(`http://127.0.0.1:${port}/`);
  t.deepEqual(response, { status: 200, body: `served by ${process.version}` });
  child.kill('SIGTERM');
  t.is(await exited(child), 0, child.output());
  t.regex(child.output(), /"mode":"stop"/);
});

for (const compiler of ['5.9', 'latest'] as const) {
  for (const resolution of ['nodenext', 'bundler'] as const) {
    test(`a strict consumer type-checks with TypeScript ${compiler}, ${resolution} resolution, no skipLibCheck`, async (t) => {
      const dir = `strict-${compiler}-${resolution}`;
      cpSync(join(repoRoot, 'test/fixtures/package/consumer.ts'), join(project.dir, dir, 'consumer.ts'));
      project.write(
        `${dir}/tsconfig.json`,
        JSON.stringify({
          compilerOptions: {
            target: 'ES2022',
            module: resolution === 'nodenext' ? 'nodenext' : 'preserve',
            moduleResolution: resolution,
            lib: ['ES2023'],
            // What TypeScript 7 does by default: no @types loaded unless a file asks.
            types: [],
            strict: true,
            exactOptionalPropertyTypes: true,
            noUncheckedIndexedAccess: true,
            // Check the package's declaration files too: that is where a missing type hides.
            skipLibCheck: false,
            noEmit: true,
          },
          files: ['consumer.ts'],
        }),
      );
      const errors = await tsc(compiler, `${dir}/tsconfig.json`);
      t.is(errors, '', errors);
    });
  }
}

for (const compiler of ['5.9', 'latest'] as const) {
  test(`examples/ type-check against the package with TypeScript ${compiler}, as a user's code`, async (t) => {
    const dir = `examples-${compiler}`;
    cpSync(join(repoRoot, 'examples'), join(project.dir, dir), { recursive: true });
    project.write(
      `${dir}/tsconfig.json`,
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'nodenext',
          moduleResolution: 'nodenext',
          lib: ['ES2023'],
          types: ['node'],
          strict: true,
          noUncheckedIndexedAccess: true,
          skipLibCheck: false,
          // The examples run with `node --import tsx` and import each other as .ts.
          allowImportingTsExtensions: true,
          noEmit: true,
        },
        include: ['**/*.ts'],
      }),
    );
    const errors = await tsc(compiler, `${dir}/tsconfig.json`);
    t.is(errors, '', errors);
  });
}

test("the README's quick start type-checks, runs and serves", async (t) => {
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  const block = /```ts\n([\s\S]*?)```/.exec(readme)?.[1];
  if (!block) return t.fail('README.md has no ```ts block');
  // The example's fixed port and PID file, made safe to run anywhere; each
  // replacement must hit, so a README change that drops one fails here.
  const port = await freePort();
  const pidFile = join(project.dir, 'app.pid');
  let code = block;
  for (const [from, to] of [
    ['port: 8080', `port: ${port}`],
    ["'/run/app/app.pid'", JSON.stringify(pidFile)],
  ] as const) {
    t.true(code.includes(from), `the quick start still says ${from}`);
    code = code.replace(from, to);
  }
  project.write('quickstart/main.ts', code);
  project.write(
    'quickstart/tsconfig.json',
    JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'nodenext', lib: ['ES2023'], types: ['node'], strict: true, skipLibCheck: false, outDir: 'out' },
      files: ['main.ts'],
    }),
  );
  const errors = await tsc('5.9', 'quickstart/tsconfig.json');
  if (errors) return t.fail(errors);

  const child = project.start(['quickstart/out/main.js']);
  // It binds '::' (both stacks): IPv4 reaches it too.
  const response = await getWhenUp(`http://127.0.0.1:${port}/`);
  t.deepEqual(response, { status: 200, body: 'hello from generation 0\n' });
  t.is(readFileSync(pidFile, 'utf8').trim(), String(child.pid));
  child.kill('SIGTERM');
  t.is(await exited(child), 0, child.output());
  t.regex(child.output(), /^stop /m, child.output());
});

/**
 * A generation's start as the installed package makes it: which addon file
 * create() mapped into the process, and whether node-gyp-build was loaded.
 */
const ADDON_PROBE = `import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Ecdysis } from 'ecdysis';
await Ecdysis.create();
const files = readFileSync('/proc/self/maps', 'utf8').split('\\n').map((line) => line.split(/\\s+/)[5] ?? '');
console.log(JSON.stringify({
  addons: [...new Set(files.filter((file) => file.endsWith('.node')))],
  nodeGypBuild: Object.keys(createRequire(import.meta.url).cache).some((file) => file.includes('/node-gyp-build/')),
}));
process.exit(0);
`;

async function probeAddon(script: string, env: Record<string, string> = {}): Promise<{ addons: string[]; nodeGypBuild: boolean }> {
  const { stdout } = await execFileAsync(process.execPath, [script], { cwd: project.dir, env: { ...process.env, ...env }, timeout: 60_000 });
  return JSON.parse(stdout) as { addons: string[]; nodeGypBuild: boolean };
}

test('installed, a generation loads the prebuild for this system by itself, without node-gyp-build', async (t) => {
  project.write('addon-probe.mjs', ADDON_PROBE);
  const prebuild = join(project.dir, `node_modules/ecdysis/prebuilds/${process.platform}-${process.arch}/ecdysis.napi.glibc.node`);
  t.deepEqual(await probeAddon(join(project.dir, 'addon-probe.mjs')), { addons: [prebuild], nodeGypBuild: false });
});

test('where it has no prebuild of its own naming, or ECDYSIS_PREBUILD names another folder, node-gyp-build decides as before', async (t) => {
  // A copy of the installed package whose prebuild carries no C library in its name: node-gyp-build takes it, the direct path does not.
  const copy = join(project.dir, 'renamed');
  const folder = join(copy, `node_modules/ecdysis/prebuilds/${process.platform}-${process.arch}`);
  cpSync(join(project.dir, 'node_modules/ecdysis'), join(copy, 'node_modules/ecdysis'), { recursive: true });
  for (const dependency of ['rxjs', 'node-gyp-build']) symlinkSync(join(project.dir, 'node_modules', dependency), join(copy, 'node_modules', dependency));
  renameSync(join(folder, 'ecdysis.napi.glibc.node'), join(folder, 'ecdysis.napi.node'));
  project.write('renamed/addon-probe.mjs', ADDON_PROBE);
  t.deepEqual(await probeAddon(join(copy, 'addon-probe.mjs')), { addons: [join(folder, 'ecdysis.napi.node')], nodeGypBuild: true });
  // node-gyp-build's override, <NAME>_PREBUILD: the project's own ecdysis loads the copy's addon.
  project.write('addon-probe-override.mjs', ADDON_PROBE);
  t.deepEqual(await probeAddon(join(project.dir, 'addon-probe-override.mjs'), { ECDYSIS_PREBUILD: join(copy, 'node_modules/ecdysis') }), {
    addons: [join(folder, 'ecdysis.napi.node')],
    nodeGypBuild: true,
  });
});

test("require('ecdysis') from CommonJS: the same module where Node can require() ES modules, else a message that says what to do", async (t) => {
  project.write(
    'require.cjs',
    `const ecdysis = require('ecdysis');
console.log(JSON.stringify({ Ecdysis: typeof ecdysis.Ecdysis, ErrorCodes: typeof ecdysis.ErrorCodes }));
`,
  );
  // process.features.require_module: Node 20.19+, 22.12+ and 24 (true unless turned off).
  const supported = (process.features as { require_module?: boolean }).require_module === true;
  if (supported) {
    const { stdout } = await project.node(['require.cjs']);
    t.deepEqual(JSON.parse(stdout), { Ecdysis: 'function', ErrorCodes: 'object' });
  }
  // Where it is unsupported, or turned off (the flag exists wherever require_module does).
  const args = supported ? ['--no-experimental-require-module', 'require.cjs'] : ['require.cjs'];
  const error = await t.throwsAsync(project.node(args));
  t.regex((error as { stderr?: string }).stderr ?? '', /require\('ecdysis'\) needs Node 20\.19\+, 22\.12\+ or 24[\s\S]*await import\('ecdysis'\)/);
});
