// The second half of `npm run build`, after tsc: makes dist/'s declaration
// files what a user's compiler can read on its own. tsc cannot be told to do
// any of this:
// - Relative imports keep their `.ts` extension in declarations
//   (rewriteRelativeImportExtensions rewrites JavaScript output only): `.js`.
// - Declarations name rxjs's classes through 'rxjs' only, never its internals
//   (src/internal/rx.ts loads rxjs/internal/Observable at run time, lazily).
// - TypeScript 7 no longer loads @types/node by itself: each declaration file
//   says it needs it.
// - Source maps are not shipped (src/ is not), so none are left in dist/.
// - The JavaScript becomes two bundles, dist/index.js and dist/cli/ecdysis.js
//   (esbuild, nothing renamed or minified, rxjs and node-gyp-build left as
//   imports): Node resolves, reads and compiles one file instead of about 55,
//   which is most of what importing the library cost at start-up, so at every
//   upgrade (about 70 ms down to 20 ms on a 2-core machine).
// Then it fails if anything it should have removed is still there.
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const NODE_REFERENCE = '/// <reference types="node" />\n';

/** Every file under `dir`, recursively. */
function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(join(dir, entry.name)) : [join(dir, entry.name)],
  );
}

const problems = [];
for (const file of files(dist)) {
  if (file.endsWith('.map')) {
    rmSync(file);
    continue;
  }
  if (!file.endsWith('.d.ts')) continue;
  let text = readFileSync(file, 'utf8');
  // from './x.ts', import('./x.ts'): relative specifiers only.
  text = text.replace(/((?:from|import)\s*\(?\s*['"])(\.{1,2}\/[^'"]*?)\.ts(['"])/g, '$1$2.js$3');
  text = text.replace(/(['"])rxjs\/internal\/Observable\1/g, "'rxjs'");
  if (!text.startsWith(NODE_REFERENCE)) text = NODE_REFERENCE + text;
  writeFileSync(file, text);
  if (/['"]\.{1,2}\/[^'"]*\.ts['"]/.test(text)) problems.push(`${file}: a relative import still ends in .ts`);
  if (/rxjs\/internal/.test(text)) problems.push(`${file}: still names rxjs/internal`);
}

const ENTRIES = ['index.js', 'cli/ecdysis.js'];
for (const entry of ENTRIES) {
  await build({
    entryPoints: [join(dist, entry)],
    outfile: join(dist, `${entry}.bundle`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    external: ['rxjs', 'rxjs/*', 'node-gyp-build'],
    logLevel: 'warning',
  });
}
for (const file of files(dist)) if (file.endsWith('.js')) rmSync(file);
for (const entry of ENTRIES) renameSync(join(dist, `${entry}.bundle`), join(dist, entry));
for (const file of files(dist)) {
  if (file.endsWith('.js') && !ENTRIES.some((entry) => file === join(dist, entry))) problems.push(`${file}: JavaScript outside the bundles`);
}

if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
