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

// Made on first use: creating it is 0.6 ms of the import (Node 20 and 24, 2
// cores), and the library asks it for builtins only, which
// process.getBuiltinModule gives (Node 20.16+).
let requireHere;
const requireFromHere = (id) => (requireHere ??= createRequire(import.meta.url))(id);
const builtin = (name) => process.getBuiltinModule?.(name) ?? requireFromHere(name);
const require = (id) => (id.startsWith('node:') ? builtin(id) : requireFromHere(id));
const fs = builtin('node:fs');
const { Script } = builtin('node:vm');
const { fileURLToPath } = builtin('node:url');

const dir = fileURLToPath(new URL('.', import.meta.url));
const CORE = `${dir}core.cjs`;

let cacheName;

/** An fd to read `file` from, or undefined when it cannot be opened (no cache there). */
function openOrUndefined(file) {
  try {
    return fs.openSync(file, 'r');
  } catch {
    return undefined;
  }
}

function sizeOrZero(fd) {
  try {
    return fs.fstatSync(fd).size;
  } catch {
    return 0;
  }
}

/** Reads `length` bytes (fewer at the end of the file) from the start of `fd` into `buffer`; the count read. */
function readFully(fd, buffer, length) {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, buffer, done, length - done, done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Not writable by others, and this user's. */
const isPrivate = ({ uid, mode }) => uid === process.geteuid() && (mode & 0o022) === 0;

/**
 * The cache file in Node's compile cache directory, when the application
 * enabled it (Node 22.8+; POSIX: ownership is what makes it safe).
 */
function compileCacheFile() {
  const cacheDir = process.geteuid ? builtin('node:module').getCompileCacheDir?.() : undefined;
  return cacheDir ? { folder: `${cacheDir}/ecdysis`, file: `${cacheDir}/ecdysis/${cacheName}` } : undefined;
}

/** Its folder is this user's own, unshared: not a link, nobody else may write it. */
function privateFolder(folder) {
  try {
    const stat = fs.lstatSync(folder);
    return stat.isDirectory() && isPrivate(stat);
  } catch {
    return false;
  }
}

/**
 * A cache in a shared directory (Node's default is under the temporary
 * directory) is code this process would run: it is read only from a regular
 * file of this user's that nobody else may write, in such a folder, opened
 * without following a link and without waiting (a FIFO put there would block
 * the start), and checked on the descriptor it is read from.
 */
function readPrivate({ folder, file }, maxSize) {
  if (!privateFolder(folder)) return undefined;
  let fd;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
    const stat = fs.fstatSync(fd);
    return stat.isFile() && isPrivate(stat) && stat.size <= maxSize ? fs.readFileSync(fd) : undefined;
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** Writes the file whole or not at all: a generation starting meanwhile never reads half of it. */
function keepCache({ folder, file }, script) {
  try {
    fs.mkdirSync(folder, { recursive: true, mode: 0o700 });
  } catch {
    return;
  }
  if (!privateFolder(folder)) return;
  const temp = `${file}.${process.pid}-${Math.random().toString(36).slice(2)}.tmp`;
  try {
    fs.writeFileSync(temp, script.createCachedData(), { mode: 0o600, flag: 'wx' });
    fs.renameSync(temp, file);
  } catch {
    // A cache that cannot be written costs the next generation a compile, nothing more.
    fs.rmSync(temp, { force: true });
  }
}

// The cache in Node's compile cache directory first, when there is one: it was
// made with this process's V8 flags (they are part of what V8 checks: the
// install's cache does not fit a service started with --max-old-space-size, for
// one), and is made when the one beside the library is missing or rejected.
//
// The source, and what names its cache: the build's hash, and the file's size
// and modification time, so that a core.cjs changed after the build (patched in
// node_modules) never meets a cache made for other code: V8 checks a cache
// against the source's length only. Both files are read into one buffer, the
// cache once the source is a string: V8 reads the cache only while it compiles,
// and memory this process has just written costs no new page faults (two
// buffers: 0.5 ms more of every generation's start, 2 cores, Node 20).
let source;
let cachedData;
let fallback;
const coreFd = fs.openSync(CORE, 'r');
try {
  const { size, mtimeMs } = fs.fstatSync(coreFd);
  cacheName = __CACHE_NAME__;
  fallback = compileCacheFile();
  // A cache is about as large as the source (1.2 times here); one far larger is
  // not one V8 made for it, and is not read (a file of gigabytes would be read whole).
  const maxCacheSize = 8 * size;
  cachedData = fallback && readPrivate(fallback, maxCacheSize);
  const cacheFd = cachedData ? undefined : openOrUndefined(dir + cacheName);
  try {
    const found = cacheFd === undefined ? 0 : sizeOrZero(cacheFd);
    const cacheSize = found <= maxCacheSize ? found : 0;
    const buffer = Buffer.allocUnsafeSlow(Math.max(size, cacheSize));
    source = buffer.toString('latin1', 0, readFully(coreFd, buffer, size));
    if (cacheSize > 0) {
      try {
        cachedData = buffer.subarray(0, readFully(cacheFd, buffer, cacheSize));
      } catch {
        // A cache that cannot be read costs a compile, nothing more.
        cachedData = undefined;
      }
    }
  } finally {
    if (cacheFd !== undefined) fs.closeSync(cacheFd);
  }
} finally {
  fs.closeSync(coreFd);
}
const script = new Script(source, { filename: CORE, cachedData });
const library = { exports: {} };
script.runInThisContext()(library.exports, require, library, CORE, dir, import.meta.url);
if (fallback && (cachedData === undefined || script.cachedDataRejected)) keepCache(fallback, script);

export const { __EXPORTS__ } = library.exports;
