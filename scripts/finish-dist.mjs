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
// - The JavaScript becomes two bundles, the library's dist/core.cjs and the
//   CLI's dist/cli/ecdysis.js (esbuild, nothing renamed, whitespace removed, rxjs
//   and node-gyp-build left as imports): Node resolves, reads and compiles one
//   file instead of about 55, which was most of what importing the library cost
//   at start-up, so at every upgrade (about 70 ms down to 20 ms on a 2-core
//   machine). In the library's bundle, built-in modules are read without their
//   ES module facades (see builtinsOnDemand below).
// - dist/index.js (scripts/dist-templates/index.js) compiles core.cjs with V8's
//   code cache, which dist/code-cache-writer.cjs writes for the Node that runs
//   this script, and re-exports the library's names.
// Then it fails if anything it should have removed is still there.
import { readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { build } from 'esbuild';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';

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
// What an earlier build left that tsc does not overwrite.
for (const file of files(dist)) if (file.endsWith('.cjs') || file.endsWith('.cache')) rmSync(file);
for (const entry of ENTRIES) {
  const library = entry === 'index.js';
  await build({
    plugins: library ? [builtinsOnDemand(files(dist).filter((file) => file.endsWith('.js') && !file.startsWith(join(dist, 'cli/'))))] : [],
    entryPoints: [join(dist, entry)],
    // The library becomes CommonJS for dist/index.js to compile with V8's code cache (see scripts/dist-templates/).
    outfile: library ? join(dist, 'core.cjs') : join(dist, `${entry}.bundle`),
    bundle: true,
    platform: 'node',
    format: library ? 'cjs' : 'esm',
    target: 'node20',
    // Whitespace only (names stay, so stack traces name the functions): 322 -> 226 kB, which V8
    // keeps whole in the heap for lazy compilation; measured 0.7-1.0 ms less to import (40 paired
    // runs, twice) and 0.1 MiB less idle RSS.
    minifyWhitespace: true,
    // Lines of about a screen's width: Node prints the source line of an uncaught error thrown
    // here (an unhandled rejection of upgrade(), say) under its message, which was up to 90 kB of
    // the bundle's code on one line.
    lineLimit: 120,
    external: ['rxjs', 'rxjs/*', 'node-gyp-build'],
    // What was the entry's URL: dist/index.js passes its own.
    define: library ? { 'import.meta.url': '__ecdysisUrl' } : {},
    logLevel: 'warning',
  });
}
for (const file of files(dist)) if (file.endsWith('.js')) rmSync(file);
renameSync(join(dist, 'cli/ecdysis.js.bundle'), join(dist, 'cli/ecdysis.js'));

// core.cjs is compiled as one function expression (see scripts/dist-templates/index.js): the file
// holds it whole, so that the source V8 keeps is the string read from the file, not a second copy
// made by adding the wrapper at run time (226 kB that would stay in the heap until a full GC). The
// wrapper stands on a line of its own, so that the columns of the bundle's first line are its own
// (stack traces name core.cjs at its lines and columns).
const bundle = readFileSync(join(dist, 'core.cjs'), 'latin1');
if (/[^\x00-\x7f]/.test(bundle)) problems.push('dist/core.cjs: not ASCII (read as latin1 at run time)');
// A vm.Script has no loader for import(): the library loads modules with require only.
if (/\bimport\s*\(/.test(bundle)) problems.push('dist/core.cjs: import() would fail in a vm.Script (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING)');
writeFileSync(join(dist, 'core.cjs'), `(function (exports, require, module, __filename, __dirname, __ecdysisUrl) {\n${bundle}\n})`, 'latin1');

// dist/index.js and dist/code-cache-writer.cjs from their templates, with what they must agree
// on: the cache's name: the build's hash and core.cjs's size and modification time (V8 checks a
// cache against the source's length only, and would take one made for other code of that length:
// a core.cjs patched after the build), V8's version and the architecture (V8 checks the rest, its
// flags among them, and rejects a cache made for others).
const buildId = createHash('sha256').update(readFileSync(join(dist, 'core.cjs'))).digest('hex').slice(0, 16);
const fill = (template, values) => {
  let text = readFileSync(fileURLToPath(new URL(`./dist-templates/${template}`, import.meta.url)), 'utf8');
  for (const [name, value] of Object.entries(values)) {
    if (!text.includes(name)) problems.push(`scripts/dist-templates/${template}: no ${name} to fill in`);
    text = text.replaceAll(name, value);
  }
  return text;
};
// core.cjs's size and modification time are the templates' `size` and `mtimeMs`.
const cacheName = { __CACHE_NAME__: `\`core-${buildId}-\${size}-\${Math.trunc(mtimeMs)}-\${process.versions.v8}-\${process.arch}.cache\`` };
writeFileSync(join(dist, 'code-cache-writer.cjs'), fill('code-cache-writer.cjs', cacheName));
// The code cache for this Node, and the names the library exports, from a Node that loads it:
// the cache of a whole upgrade where upgrades run (it needs the addon, built first by `npm install`),
// else that of loading the library.
const writeCodeCache = (args) => execFileSync(process.execPath, [join(dist, 'code-cache-writer.cjs'), ...args], { encoding: 'utf8', timeout: 60_000 });
let written;
if (process.platform === 'linux' && process.env.ECDYSIS_LOCAL !== '1') {
  try {
    written = writeCodeCache(['--warm']);
    if (!written) throw new Error('no generation wrote the cache');
  } catch (err) {
    console.warn(`the code cache of an upgrade could not be made, so only that of loading the library is: ${err.stderr?.trim() || err.message}`);
  }
}
const names = JSON.parse(written ?? writeCodeCache([]));
if (!Array.isArray(names) || names.length === 0 || !names.every((name) => /^[A-Za-z_$][\w$]*$/.test(name))) problems.push(`core.cjs exports ${JSON.stringify(names)}`);
writeFileSync(join(dist, 'index.js'), fill('index.js', { ...cacheName, __EXPORTS__: names.join(', ') }));
for (const file of files(dist)) {
  if (file.endsWith('.js') && !ENTRIES.some((entry) => file === join(dist, entry))) problems.push(`${file}: JavaScript outside the bundles`);
}

if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
