// ecdysis's entry (dist/index.js, written by scripts/finish-dist.mjs from
// scripts/dist-templates/index.js). The library's code is core.cjs, one
// CommonJS bundle wrapped in a function expression (by the build, so that the
// source V8 keeps is the string read from the file: ASCII, read as latin1),
// which this compiles with V8's code cache and calls.
//
// Every generation of a service imports ecdysis while it starts, so what the
// import costs is part of every upgrade, and most of it was V8 compiling the
// bundle (about 5 ms of 7, 2 cores, Node 20). The code cache is made for the
// Node that builds or installs the package (code-cache-writer.cjs, run by
// `npm run build` and by the install script); on another Node, or with other
// V8 flags, V8 rejects it and the source is compiled as before. When the
// application enabled Node's compile cache (the `compileCache` option, Node
// 22.1+) and no cache beside the library fits this Node, the code cache is
// kept in that directory instead, so that later generations compile nothing
// either.
//
// The code runs in the main context like any CommonJS module, with a
// `require` of this directory, so rxjs and node-gyp-build resolve as before.
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const builtin = (name) => process.getBuiltinModule?.(name) ?? require(name);
const { readFileSync, writeFileSync, renameSync, mkdirSync, rmSync, openSync, fstatSync, closeSync } = builtin('node:fs');
const { Script } = builtin('node:vm');
const { fileURLToPath } = builtin('node:url');

const dir = fileURLToPath(new URL('.', import.meta.url));
const CORE = `${dir}core.cjs`;
const CACHE = __CACHE_NAME__;

function readOrUndefined(file) {
  try {
    return readFileSync(file);
  } catch {
    return undefined;
  }
}

/**
 * A cache in a shared directory (Node's default is under the temporary
 * directory) is code this process would run: it is read only from a file of
 * this user's that nobody else may write, checked on the descriptor it is read
 * from.
 */
function readPrivate(file) {
  let fd;
  try {
    fd = openSync(file, 'r');
    const { uid, mode } = fstatSync(fd);
    return uid === process.geteuid?.() && (mode & 0o022) === 0 ? readFileSync(fd) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The cache file in Node's compile cache directory, when the application enabled it. */
function compileCacheFile() {
  const cacheDir = require('node:module').getCompileCacheDir?.();
  return cacheDir ? { dir: `${cacheDir}/ecdysis`, file: `${cacheDir}/ecdysis/${CACHE}` } : undefined;
}

/** Writes the file whole or not at all: a generation starting meanwhile never reads half of it. */
function keepCache({ dir: cacheDir, file }, data) {
  const temp = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(cacheDir, { recursive: true, mode: 0o700 });
    writeFileSync(temp, data, { mode: 0o600 });
    renameSync(temp, file);
  } catch {
    // A cache that cannot be written costs the next generation a compile, nothing more.
    rmSync(temp, { force: true });
  }
}

let cachedData = readOrUndefined(dir + CACHE);
const fallback = cachedData ? undefined : compileCacheFile();
if (fallback) cachedData = readPrivate(fallback.file);
const script = new Script(readFileSync(CORE, 'latin1'), { filename: CORE, cachedData });
const library = { exports: {} };
script.runInThisContext()(library.exports, require, library, CORE, dir, import.meta.url);
if (fallback && (!cachedData || script.cachedDataRejected)) keepCache(fallback, script.createCachedData());

export const { __EXPORTS__ } = library.exports;
