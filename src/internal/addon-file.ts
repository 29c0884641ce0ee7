/**
 * Finding and opening the C++ addon: a build from source, else the prebuild
 * for this system, else what node-gyp-build finds (native.ts types what it
 * exports). Opened on first use, never at import.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { localMode, localReason } from './local-mode.ts';

/**
 * The package's root: the nearest directory above this module whose
 * package.json names ecdysis (dist/internal/ when installed, or a compiled copy
 * of src/ elsewhere in a checkout).
 */
function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'ecdysis') return dir;
      } catch {
        // not ours; keep looking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) return fileURLToPath(new URL('../../', import.meta.url));
    dir = parent;
  }
}

/**
 * The prebuilt addon node-gyp-build would pick for this process among those
 * the package ships (prebuilds/<platform>-<arch>/ecdysis.napi.<libc>.node; the
 * C library from LIBC, else musl where /etc/alpine-release exists, as it
 * decides), when there is one; undefined where node-gyp-build must decide
 * (ECDYSIS_PREBUILD names another folder, LIBC is neither glibc nor musl, no
 * such file). Loading node-gyp-build and letting it read the folders took
 * 5 to 9 ms of every generation's start (Node 20, 2 cores), to find this file.
 */
function prebuildPath(root: string): string | undefined {
  if (process.env.ECDYSIS_PREBUILD) return undefined;
  const libc = process.env.LIBC || (existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
  if (libc !== 'glibc' && libc !== 'musl') return undefined;
  const file = join(root, 'prebuilds', `${process.platform}-${process.arch}`, `ecdysis.napi.${libc}.node`);
  return existsSync(file) ? file : undefined;
}

/**
 * What require() of an addon does, without require(): the first require() of
 * a file by path in a process that has loaded only ES modules costs 1.5 ms
 * more than the dlopen itself (Node 20, 2 cores).
 */
function dlopen(file: string): unknown {
  const module = { exports: {} };
  process.dlopen(module, file);
  return module.exports;
}

/** The addon's exports; a coded error (ERR_ECDYSIS_UNSUPPORTED) that says what to do where it cannot be loaded. */
export function openAddon(): unknown {
  if (localMode()) {
    // Nothing in local mode may need the addon: a path that does is a bug, said as one.
    const error = new Error(`ecdysis: internal error: the native addon was asked for in local mode (${localReason()}), where it is never loaded`);
    (error as NodeJS.ErrnoException).code = 'ERR_ECDYSIS_UNSUPPORTED';
    throw error;
  }
  const packageRoot = findPackageRoot();
  try {
    // A build from source comes first, as node-gyp-build would take it.
    const built = join(packageRoot, 'build', 'Release', 'ecdysis.node');
    if (existsSync(built)) return dlopen(built);
    const prebuild = prebuildPath(packageRoot);
    if (prebuild !== undefined) {
      try {
        return dlopen(prebuild);
      } catch {
        // node-gyp-build looks further (and says what it looked for), as before.
      }
    }
    const nodeGypBuild = createRequire(import.meta.url)('node-gyp-build') as (dir: string) => unknown;
    return nodeGypBuild(packageRoot);
  } catch (err) {
    // node-gyp-build takes build/Release (a build from source: a checkout, or a
    // platform without a prebuild) before prebuilds/<platform>-<arch>/.
    const error = new Error(
      `ecdysis: could not load its native addon from ${packageRoot} on ${process.platform}-${process.arch}, ` +
        `Node ${process.version}. Upgrades need this addon, so Linux (elsewhere ecdysis runs in local mode, without it). It ships prebuilt addons for linux-x64 ` +
        `(glibc 2.28+ and musl) and linux-arm64 (glibc 2.28+); elsewhere on Linux it is built from source ` +
        `when installed, which needs python3, make and a C++ compiler and does not happen with ` +
        `--ignore-scripts: run "npm rebuild ecdysis" and read its output. Cause: ${(err as Error).message}`,
      { cause: err },
    );
    (error as NodeJS.ErrnoException).code = 'ERR_ECDYSIS_UNSUPPORTED';
    throw error;
  }
}
