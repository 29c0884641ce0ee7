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
//   (esbuild, nothing renamed, whitespace removed, rxjs and node-gyp-build left as
//   imports): Node resolves, reads and compiles one file instead of about 55,
//   which is most of what importing the library cost at start-up, so at every
//   upgrade (about 70 ms down to 20 ms on a 2-core machine). In the library's
//   bundle, built-in modules are read without their ES module facades (see
//   builtinsOnDemand below).
// Then it fails if anything it should have removed is still there.
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const dist = fileURLToPath(new URL('../dist/', import.meta.url));
const NODE_REFERENCE = '/// <reference types="node" />\n';

/** Every file under `dir`, recursively. */
function files(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? files(join(dir, entry.name)) : [join(dir, entry.name)],
  );
}

const problems = [];

/**
 * The library's `import { x } from 'node:y'` become reads from the built-in
 * module itself (process.getBuiltinModule, or require on Node before 20.16),
 * not from its ES module facade: building a facade reads every export of the
 * module, and the lazy ones load more built-ins (node:util's parseArgs and
 * MIMEType, node:net's BlockList and SocketAddress), which cost start-up time
 * and memory in every generation. Built-ins needed only by an option or at an
 * upgrade (LAZY: node:http for the probes, node:fs/promises, os functions) are
 * not even loaded until first called. node:module stays an import: it is how
 * the others are required.
 */
const LAZY = new Set(['node:http', 'node:fs/promises', 'node:os.availableParallelism', 'node:os.getPriority', 'node:os.setPriority', 'node:os.tmpdir']);
function builtinsOnDemand(sources) {
  const require = createRequire(import.meta.url);
  /** specifier -> the names the sources import from it */
  const names = new Map();
  for (const file of sources) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/^import\s*(\*\s*as\s+\w+|\{[^}]*\}|\w+)?\s*(?:from\s*)?["'](node:[\w/]+)["']/gm)) {
      if (m[2] === 'node:module') continue;
      if (!m[1]?.startsWith('{')) throw new Error(`${file}: import ${m[1] ?? ''} from '${m[2]}': only named imports of built-ins are rewritten`);
      const set = names.get(m[2]) ?? new Set();
      for (const part of m[1].slice(1, -1).split(',')) if (part.trim()) set.add(part.trim().split(/\s+as\s+/)[0]);
      names.set(m[2], set);
    }
  }
  return {
    name: 'builtins-on-demand',
    setup(b) {
      b.onResolve({ filter: /^node:/ }, (args) => (args.path === 'node:module' || !names.has(args.path) ? { path: args.path, external: true } : { path: args.path, namespace: 'builtin' }));
      b.onLoad({ filter: /.*/, namespace: 'builtin' }, ({ path }) => {
        const real = require(path);
        const lines = ["import { createRequire } from 'node:module';", `const load = () => process.getBuiltinModule?.(${JSON.stringify(path)}) ?? createRequire(import.meta.url)(${JSON.stringify(path)});`];
        const lazyModule = LAZY.has(path);
        if (!lazyModule) lines.push('const m = load();');
        for (const name of names.get(path)) {
          if (!(name in real)) throw new Error(`${path} has no export ${name}`);
          const lazy = lazyModule || LAZY.has(`${path}.${name}`);
          if (lazy && (typeof real[name] !== 'function' || /^class\b/.test(Function.prototype.toString.call(real[name])) || real[name].prototype?.constructor === real[name] && Object.getOwnPropertyNames(real[name].prototype).length > 1)) {
            throw new Error(`${path}.${name} is not a plain function: it cannot be loaded on first call`);
          }
          lines.push(lazy ? `export function ${name}(...args) { return ${lazyModule ? 'load()' : 'm'}.${name}(...args); }` : `export const ${name} = m.${name};`);
        }
        return { contents: lines.join('\n'), loader: 'js', resolveDir: dist };
      });
    },
  };
}
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
    plugins: entry === 'index.js' ? [builtinsOnDemand(files(dist).filter((file) => file.endsWith('.js') && !file.startsWith(join(dist, 'cli/'))))] : [],
    entryPoints: [join(dist, entry)],
    outfile: join(dist, `${entry}.bundle`),
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // Whitespace only (names stay, so stack traces name the functions): 322 -> 226 kB, which V8
    // keeps whole in the heap for lazy compilation; measured 0.7-1.0 ms less to import (40 paired
    // runs, twice) and 0.1 MiB less idle RSS.
    minifyWhitespace: true,
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
