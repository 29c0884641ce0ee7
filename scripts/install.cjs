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

if (process.platform === 'linux') {
  // node-gyp-build's command line, in this process (it reads no arguments here).
  require('node-gyp-build/bin.js');
} else {
  console.log(`ecdysis: no native addon to build on ${process.platform}: it runs in local mode there (upgrades need Linux)`);
}
