'use strict';
// dist/code-cache-writer.cjs (written by scripts/finish-dist.mjs from
// scripts/dist-templates/code-cache-writer.cjs): compiles core.cjs as
// dist/index.js does, loads the library, writes V8's code cache for this Node
// next to it, where dist/index.js looks first, and prints the names the library
// exports. `npm run build` runs it, and so does the install script, for the
// Node that installs the package. Usage: node code-cache-writer.cjs
const { readFileSync, writeFileSync, renameSync, rmSync } = require('node:fs');
const { join } = require('node:path');
const { Script } = require('node:vm');
const { pathToFileURL } = require('node:url');

const CORE = join(__dirname, 'core.cjs');
const CACHE = __CACHE_NAME__;
const script = new Script(__HEAD__ + readFileSync(CORE, 'utf8') + __TAIL__, { filename: CORE, lineOffset: -1 });
const library = { exports: {} };
script.runInThisContext()(library.exports, require, library, CORE, __dirname, pathToFileURL(join(__dirname, 'index.js')).href);
const file = join(__dirname, CACHE);
const temp = `${file}.${process.pid}.tmp`;
try {
  writeFileSync(temp, script.createCachedData());
  renameSync(temp, file);
} finally {
  rmSync(temp, { force: true });
}
process.stdout.write(JSON.stringify(Object.keys(library.exports)));
