'use strict';
// dist/code-cache-writer.cjs (written by scripts/finish-dist.mjs from
// scripts/dist-templates/code-cache-writer.cjs): writes V8's code cache of the
// library's code (core.cjs) for this Node, next to it, where dist/index.js looks
// first. `npm run build` runs it, and so does the install script, for the Node
// that installs the package.
//
//   node code-cache-writer.cjs          the cache of what loading the library compiles
//   node code-cache-writer.cjs --warm   the cache of a whole upgrade (Linux)
//
// V8 compiles a function when it is first called, and a code cache holds what
// was compiled when it was made. Made once the library is loaded, it spares a
// new generation the compiling of the library's top level; made by a generation
// that started as a child, served a request and upgraded once, it also spares
// it the compiling of create(), listen, ready() (about 4 ms of CPU on a 2-core
// machine) and the serving generation the compiling of its first upgrade. With
// --warm, this process is generation 0 of a small service on 127.0.0.1 (its
// environment without anything systemd or an outer ecdysis passed): it upgrades
// to generation 1, which serves one request, upgrades to generation 2 and then
// writes the cache; generation 2 stops once generation 1 has exited. Each
// generation exits by itself, at the latest TIME_LIMIT_MS after generation 0
// started; the
// generations share this command's stdout, which closes when the last exits.
// Both forms print the names the library exports (on stdout, as JSON) once the
// cache is written.
const { readFileSync, writeFileSync, renameSync, rmSync, statSync } = require('node:fs');
const { join } = require('node:path');
const { Script } = require('node:vm');
const { pathToFileURL } = require('node:url');

const CORE = join(__dirname, 'core.cjs');
// The name dist/index.js looks for (see there): from the build, and core.cjs's size and modification time.
const { size, mtimeMs } = statSync(CORE);
const CACHE = join(__dirname, __CACHE_NAME__);
/** The whole warm-up's, from its start: generation 0 passes its deadline on to the others. */
const TIME_LIMIT_MS = 20_000;
const PORT_VARIABLE = 'ECDYSIS_CODE_CACHE_WRITER_PORT';
const DEADLINE_VARIABLE = 'ECDYSIS_CODE_CACHE_WRITER_DEADLINE';
const role = process.argv[2];

const script = new Script(readFileSync(CORE, 'latin1'), { filename: CORE });
const library = { exports: {} };
script.runInThisContext()(library.exports, require, library, CORE, __dirname, pathToFileURL(join(__dirname, 'index.js')).href);

function writeCache() {
  const temp = `${CACHE}.${process.pid}.tmp`;
  try {
    writeFileSync(temp, script.createCachedData(), { flag: 'wx' });
    renameSync(temp, CACHE);
  } finally {
    rmSync(temp, { force: true });
  }
}

const names = () => JSON.stringify(Object.keys(library.exports));

/** One generation of the warm-up service (see the top). */
async function generation(next) {
  const { Ecdysis } = library.exports;
  const { createServer } = require('node:http');
  const ecdysis = await Ecdysis.create({
    upgradeOn: [],
    stopOn: [],
    systemd: false,
    probation: 0,
    ...(next ? { command: { file: process.execPath, args: [__filename, next] } } : {}),
  });
  const port = Number(process.env[PORT_VARIABLE] ?? 0);
  const listener = await ecdysis.listenTcp({ host: '127.0.0.1', port });
  const server = createServer((request, response) => response.end('warm'));
  listener.serve(server);
  await ecdysis.ready();
  return { ecdysis, port: listener.port };
}

async function main() {
  if (role === undefined) {
    writeCache();
    process.stdout.write(names());
    return;
  }
  if (role === '--warm') {
    // What systemd or an outer ecdysis service passed to the command that runs this (the
    // hand-over, `ecdysis run`'s mark); ECDYSIS_LOCAL and ECDYSIS_SPAWN, the user's choices, stay.
    for (const name of Object.keys(process.env)) if (/^(NOTIFY_SOCKET|WATCHDOG_|LISTEN_|ECDYSIS_HANDOFF|ECDYSIS_RUN)/.test(name)) delete process.env[name];
    process.env[DEADLINE_VARIABLE] = String(Date.now() + TIME_LIMIT_MS);
  }
  const left = Number(process.env[DEADLINE_VARIABLE]) - Date.now();
  setTimeout(() => process.exit(1), Number.isFinite(left) ? Math.max(0, Math.min(left, TIME_LIMIT_MS)) : 0).unref();
  if (role === '--warm') {
    const { ecdysis, port } = await generation('--warm-child');
    await ecdysis.upgrade({ env: { [PORT_VARIABLE]: String(port) } });
    await ecdysis.drain({ timeout: 5_000 });
    // Generation 1 upgrades once this one has exited, then writes the cache and the names.
    process.exit(0);
  }
  if (role === '--warm-child') {
    const { ecdysis, port } = await generation('--warm-last');
    const body = await new Promise((resolve, reject) => {
      require('node:http').get({ host: '127.0.0.1', port, path: '/' }, (response) => {
        let text = '';
        response.setEncoding('utf8').on('data', (chunk) => (text += chunk)).on('end', () => resolve(text));
      }).on('error', reject);
    });
    if (body !== 'warm') throw new Error(`the warm-up request got ${JSON.stringify(body)}`);
    await ecdysis.waitForParent();
    await ecdysis.upgrade();
    await ecdysis.drain({ timeout: 5_000, idleTimeout: 0 });
    writeCache();
    process.stdout.write(names());
    process.exit(0);
  }
  if (role === '--warm-last') {
    const { ecdysis } = await generation(undefined);
    await ecdysis.waitForParent();
    ecdysis.stop();
    await ecdysis.drain({ timeout: 5_000, idleTimeout: 0 });
    process.exit(0);
  }
  throw new Error(`unknown argument ${role}`);
}

main().catch((err) => {
  process.stderr.write(`code-cache-writer ${role ?? ''}: ${err.stack}\n`);
  process.exit(1);
});
