// The second half of `npm run build`, after tsc: makes dist/'s declaration
// files what a user's compiler can read on its own. tsc cannot be told to do
// any of this:
// - Relative imports keep their `.ts` extension in declarations
//   (rewriteRelativeImportExtensions rewrites JavaScript output only): `.js`.
// - src/ imports Observable from 'rxjs/internal/Observable' at run time on
//   purpose (it loads a fraction of rxjs, so start-up, and so every upgrade,
//   is faster); that path is rxjs's internals, not its public API, so the
//   types name the same class through 'rxjs'.
// - TypeScript 7 no longer loads @types/node by itself: each declaration file
//   says it needs it.
// - Source maps are not shipped (src/ is not), so none are left in dist/.
// Then it fails if anything it should have removed is still there.
import { readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
