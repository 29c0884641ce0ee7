/**
 * `npm run prebuilds`: builds the addon for every target in targets.ts into
 * prebuilds/<platform>-<arch>/ecdysis.napi.<libc>.node (node-gyp-build's
 * names), checks what each binary asks of the dynamic loader, runs each one
 * this machine can run, and writes prebuilds/manifest.json with the hash of
 * the sources they came from (a test fails when the sources move on).
 *
 * Debian only, as these machines are: as root, installs the cross compiler,
 * musl-tools and qemu-user-static with apt-get when they are missing. Node
 * headers (and the arm64 node run under qemu) come from the npm registry's
 * node-linux-* packages, cached in .node/ by scripts/fetch-node.sh.
 *
 *   npm run prebuilds                     all targets
 *   npm run prebuilds -- linux-x64-musl   one target, while the others still match the sources
 *
 * (Not "npm run prebuild": npm would run a script of that name before every
 * "npm run build".)
 */
import { execFileSync, spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  binaryPath,
  compareVersions,
  elfFacts,
  fromNode,
  GLIBC_FLOOR,
  MUSL_LIBC,
  muslLoadCheck,
  manifestPath,
  nodeAddonApiVersion,
  prebuildsDir,
  readManifest,
  repoRoot,
  sha256File,
  sourcesHash,
  targetName,
  targets,
  type Manifest,
  type Target,
} from './targets.ts';

const stageRoot = join(repoRoot, 'build/prebuild');
const MUSL_SPECS = '/usr/lib/x86_64-linux-musl/musl-gcc.specs';
const MUSL_INCLUDE = '/usr/include/x86_64-linux-musl';
const QEMU_AARCH64 = 'qemu-aarch64-static';
/** Where Debian's cross packages put the arm64 glibc and libstdc++ that qemu's arm64 node loads. */
const AARCH64_SYSROOT = '/usr/aarch64-linux-gnu';

function run(command: string, args: string[], options: SpawnSyncOptions = {}): void {
  const result = spawnSync(command, args, { stdio: 'inherit', ...options });
  if (result.error) throw result.error;
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} exited with ${result.status ?? result.signal}`);
}

function output(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8' }).trim();
}

function have(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** The Debian packages each needed tool comes from; installed when missing (root only). */
function ensureTools(selected: Target[]): void {
  const tools = new Map<string, string>([['readelf', 'binutils']]);
  for (const target of selected) {
    tools.set(`${target.toolPrefix}g++`, target.debianPackages[0]!);
    if (target.libc === 'musl') tools.set('musl-gcc', 'musl-tools');
    if (target.arch === 'arm64') tools.set(QEMU_AARCH64, 'qemu-user-static');
  }
  const missing = [...new Set([...tools].filter(([tool]) => !have(tool)).map(([, pkg]) => pkg))];
  if (selected.some((t) => t.libc === 'musl') && !existsSync(MUSL_LIBC)) missing.push('musl-dev');
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0 || !have('apt-get')) {
    throw new Error(`missing Debian packages: ${missing.join(' ')}; install them with: apt-get install ${missing.join(' ')}`);
  }
  console.log(`== installing ${missing.join(' ')}`);
  run('apt-get', ['update', '-q']);
  run('apt-get', ['install', '-y', '-q', ...missing], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

/** A Node distribution from npm (headers for node-gyp, and a node to run the check with). */
function nodeDist(target: Target): string {
  return output(join(repoRoot, 'scripts/fetch-node.sh'), [target.nodePackage, '20']);
}

interface Toolchain {
  cc: string;
  cxx: string;
  ldflags: string[];
}

/**
 * The compilers for one target. musl: Debian's g++ with musl's C headers in
 * place of glibc's (musl-gcc's specs file does that and links against musl),
 * libstdc++'s own headers with the overlay in musl-include/ in front of their
 * glibc configuration, the kernel's headers after everything, and libstdc++
 * plus libgcc's unwinder linked statically.
 */
function toolchain(target: Target, stage: string): Toolchain {
  const common = ['-static-libstdc++', '-Wl,--exclude-libs,ALL', '-Wl,--as-needed', join(stage, 'compat.o')];
  if (target.libc === 'glibc') {
    return { cc: `${target.toolPrefix}gcc`, cxx: `${target.toolPrefix}g++`, ldflags: common };
  }
  const gccMajor = output('g++', ['-dumpversion']).split('.')[0]!;
  // Only the kernel's own headers (linux/, asm/, asm-generic/), not glibc's.
  const kernel = join(stage, 'kernel-include');
  mkdirSync(kernel, { recursive: true });
  symlinkSync('/usr/include/linux', join(kernel, 'linux'));
  symlinkSync('/usr/include/asm-generic', join(kernel, 'asm-generic'));
  symlinkSync('/usr/include/x86_64-linux-gnu/asm', join(kernel, 'asm'));
  const cxxIncludes = [
    `/usr/include/c++/${gccMajor}`,
    join(repoRoot, 'scripts/prebuild/musl-include'),
    `/usr/include/x86_64-linux-gnu/c++/${gccMajor}`,
    `/usr/include/c++/${gccMajor}/backward`,
    MUSL_INCLUDE,
  ];
  const cxx = ['g++', `-specs=${MUSL_SPECS}`, ...cxxIncludes.map((dir) => `-isystem ${dir}`), `-idirafter ${kernel}`].join(' ');
  // musl-gcc's specs replace gcc's link line and drop --eh-frame-hdr; without
  // that table the unwinder finds no frame and every C++ throw terminates.
  return { cc: 'musl-gcc', cxx, ldflags: [...common, '-static-libgcc', '-Wl,--eh-frame-hdr'] };
}

function build(target: Target): void {
  const name = targetName(target);
  console.log(`\n== ${name}`);
  const stage = join(stageRoot, name);
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true });
  // A copy of the sources, so the checkout's own build/ (what tests load) is never touched.
  cpSync(join(repoRoot, 'binding.gyp'), join(stage, 'binding.gyp'));
  cpSync(join(repoRoot, 'native'), join(stage, 'native'), { recursive: true });

  const tools = toolchain(target, stage);
  run('sh', ['-c', `${tools.cc} -c -O2 -fPIC -Wall -Wextra -Werror -o compat.o ${join(repoRoot, 'scripts/prebuild/compat.c')}`], { cwd: stage });
  const nodeGyp = join(repoRoot, 'node_modules/node-gyp/bin/node-gyp.js');
  run(process.execPath, [nodeGyp, 'rebuild', `--arch=${target.arch}`, `--nodedir=${nodeDist(target)}`, '--jobs=2'], {
    cwd: stage,
    env: { ...process.env, CC: tools.cc, CXX: tools.cxx, LDFLAGS: tools.ldflags.join(' ') },
  });

  const out = binaryPath(target);
  mkdirSync(join(prebuildsDir, target.platformArch), { recursive: true });
  copyFileSync(join(stage, 'build/Release/ecdysis.node'), out);
  run(`${target.toolPrefix}strip`, ['--strip-unneeded', out]);
  audit(target, out);
  if (target.libc === 'musl') {
    // The same compiler and link flags on a small C++ library that throws: run by runChecks().
    run('sh', ['-c', `${tools.cxx} -std=c++17 -O2 -shared -fPIC -o selftest.so ${join(repoRoot, 'scripts/prebuild/musl-selftest.cc')} ${tools.ldflags.join(' ')}`], {
      cwd: stage,
    });
  }
}

/** What the dynamic loader will be asked for: nothing newer than the floor, nothing but libc. */
function audit(target: Target, file: string): void {
  const facts = elfFacts(file);
  const problems: string[] = [];
  if (!output('readelf', ['-lW', file]).includes('GNU_EH_FRAME')) problems.push('no PT_GNU_EH_FRAME: C++ exceptions could not unwind');
  if (target.libc === 'glibc') {
    // The loader itself (for thread-local storage) and libgcc_s are wherever Node runs.
    const extra = facts.needed.filter((lib) => !['libc.so.6', 'libgcc_s.so.1'].includes(lib) && !lib.startsWith('ld-linux-'));
    if (extra.length) problems.push(`needs ${extra.join(', ')}`);
    for (const version of facts.versions) {
      const [family, number] = version.split('_');
      if (family === 'GLIBC' && compareVersions(number!, GLIBC_FLOOR) > 0) problems.push(`needs ${version} (floor ${GLIBC_FLOOR})`);
      if (family === 'GLIBCXX' || family === 'CXXABI') problems.push(`needs the host's libstdc++ (${version})`);
    }
  } else {
    if (facts.needed.join() !== 'libc.so') problems.push(`needs ${facts.needed.join(', ')} (only musl's libc.so expected)`);
    const musl = new Set(
      output('readelf', ['-W', '--dyn-syms', MUSL_LIBC])
        .split('\n')
        .map((line) => line.trim().split(/\s+/))
        .filter((cols) => cols.length >= 8 && cols[6] !== 'UND')
        .map((cols) => cols[7]!.replace(/@.*/, '')),
    );
    const unresolved = facts.undefinedStrong.filter((symbol) => !fromNode(symbol) && !musl.has(symbol));
    if (unresolved.length) problems.push(`symbols musl does not define: ${unresolved.join(', ')}`);
  }
  if (problems.length) throw new Error(`${file}:\n  ${problems.join('\n  ')}`);
  const glibc = facts.versions
    .filter((v) => v.startsWith('GLIBC_'))
    .map((v) => v.slice('GLIBC_'.length))
    .sort(compareVersions)
    .at(-1);
  console.log(`   ${file}: ${statSync(file).size} bytes, needs ${facts.needed.join(' ')}${glibc ? `, glibc ${glibc}` : ''}`);
}

/** Run the checks of check-addon.cjs on each binary this machine can run. */
function runChecks(selected: Target[]): string[] {
  const report: string[] = [];
  const check = join(repoRoot, 'scripts/prebuild/check-addon.cjs');
  for (const target of selected) {
    const file = binaryPath(target);
    if (target.platformArch === 'linux-x64' && target.libc === 'glibc') {
      run(process.execPath, [check, file]);
      report.push(`${targetName(target)}: loaded by node ${process.version}`);
    } else if (target.arch === 'arm64' && have(QEMU_AARCH64)) {
      const node = join(nodeDist(target), 'bin/node');
      run(QEMU_AARCH64, ['-L', AARCH64_SYSROOT, node, check, file]);
      report.push(`${targetName(target)}: loaded by an arm64 node 20 under qemu-user`);
    } else if (target.libc === 'musl') {
      const stage = join(stageRoot, targetName(target));
      const said = muslLoadCheck(file, stage, join(stage, 'selftest.so'));
      report.push(`${targetName(target)}: ${said} (no musl Node exists for this machine: not run by Node)`);
    }
  }
  return report;
}

function compilerVersion(target: Target): string {
  return output(target.libc === 'musl' ? 'g++' : `${target.toolPrefix}g++`, ['--version']).split('\n')[0]!;
}

function main(): void {
  const wanted = process.argv.slice(2);
  const selected = wanted.length ? targets.filter((t) => wanted.includes(targetName(t))) : targets;
  if (selected.length !== (wanted.length || targets.length)) {
    throw new Error(`unknown target in ${wanted.join(' ')}; targets: ${targets.map(targetName).join(' ')}`);
  }
  const previous: Manifest | undefined = existsSync(manifestPath) && wanted.length ? readManifest() : undefined;
  const sources = sourcesHash();
  if (previous && (previous.sources !== sources || previous.nodeAddonApi !== nodeAddonApiVersion())) {
    throw new Error('the sources changed since the other prebuilds were made: run "npm run prebuilds" for every target');
  }
  ensureTools(selected);
  for (const target of selected) build(target);

  const manifest: Manifest = { sources, nodeAddonApi: nodeAddonApiVersion(), binaries: { ...previous?.binaries } };
  for (const target of selected) {
    const file = binaryPath(target);
    manifest.binaries[`${target.platformArch}/ecdysis.napi.${target.libc}.node`] = {
      sha256: sha256File(file),
      bytes: statSync(file).size,
      requires: target.libc === 'glibc' ? `glibc >= ${GLIBC_FLOOR}` : 'musl',
      compiler: compilerVersion(target),
    };
  }
  writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);

  console.log('\n== checks');
  const report = runChecks(selected);
  console.log(`\n${report.join('\n')}\nwrote ${manifestPath}`);
}

main();
