#!/usr/bin/env node
// The package's install script (`npm install ecdysis`). The native addon exists
// for Linux only: elsewhere (macOS, Windows) ecdysis runs in local mode without
// it, so nothing is built there and no compiler is needed. On Linux this is
// node-gyp-build, as before: a prebuild that fits is used, else the addon is
// built from source (python3, make, a C++ compiler).
//
// npm runs node-gyp by itself for a package with a binding.gyp and no install
// script of its own; this script, and "gypfile": false in package.json, make
// sure it never does.
'use strict';

const { existsSync } = require('node:fs');
const { join } = require('node:path');
const { execFileSync } = require('node:child_process');

// The library's V8 code cache for the Node that installs it (see
// dist/code-cache-writer.cjs; the package carries none, since one fits only the
// Node that made it). On Linux, once the addon is there, the cache of a whole
// upgrade (unless ECDYSIS_LOCAL=1), else that of loading the library. Best
// effort: without a cache the library loads as well, a few milliseconds slower.
// A checkout has no dist/ yet at this point (its prepare script builds it, and
// writes the cache).
const writer = join(__dirname, '..', 'dist', 'code-cache-writer.cjs');
function writeCodeCache(forms) {
  if (!existsSync(writer)) return;
  let failure;
  for (const args of forms) {
    try {
      // stdout is a pipe, which every generation of --warm holds: this returns when the last has
      // exited (each exits by itself within 20 s of the first's start).
      if (execFileSync(process.execPath, [writer, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 }).length > 0) return;
    } catch (err) {
      failure ??= `${String(err.stderr ?? '').trim().split('\n').at(-1) || err.message}`;
    }
  }
  console.log(`ecdysis: no code cache written (${failure}); the library is compiled at each start instead`);
}

if (process.platform === 'linux') {
  // node-gyp-build's command line, in this process (it reads no arguments here).
  // It works asynchronously (a test of the prebuilds, a build from source) and
  // exits with a failure's code.
  process.on('exit', (code) => {
    if (code === 0) writeCodeCache(process.env.ECDYSIS_LOCAL === '1' ? [[]] : [['--warm'], []]);
  });
  require('node-gyp-build/bin.js');
} else {
  console.log(`ecdysis: no native addon to build on ${process.platform}: it runs in local mode there (upgrades need Linux)`);
  writeCodeCache([[]]);
}
