#!/usr/bin/env node
// The layer check (`npm run typecheck`, `npm test`): every file of src/ belongs
// to one layer of src/layers.json, and may import only from its own layer or
// the ones below it; no import cycle, anywhere. Type-only imports count: a
// type that points up a layer ties the layers together as a value does.
//
//   node scripts/check-layers.mjs [--root DIR] [--quiet]
//
// Prints one line per upward import and per cycle, then a summary; exits 1 on
// any. Dependency-free, so it runs before anything is built.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { root: { type: 'string' }, quiet: { type: 'boolean', default: false } } });
const root = resolve(values.root ?? join(dirname(new URL(import.meta.url).pathname), '..'));
const src = join(root, 'src');
const { layers } = JSON.parse(readFileSync(join(src, 'layers.json'), 'utf8'));

/** Every .ts file under `dir`, as a path relative to the root with '/' separators. */
function sources(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') ? [relative(root, path).split(sep).join('/')] : [];
  });
}

/** The layer of a file: the entry whose path is the longest prefix of it. */
function layerOf(file) {
  let best;
  layers.forEach((layer, index) => {
    for (const path of layer.paths) {
      const matches = path.endsWith('/') ? file.startsWith(path) : file === path;
      if (matches && (!best || path.length > best.path.length)) best = { index, name: layer.name, path };
    }
  });
  return best;
}

/** Relative imports of a file: `import … from`, `export … from`, side-effect imports, `import('…')`. */
function importsOf(file) {
  const text = readFileSync(join(root, file), 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const found = [];
  const statement = /(?:^|[;\n])\s*(import|export)\s+(type\s+)?([^'";]*?)\s*from\s*['"]([^'"]+)['"]/g;
  for (const m of text.matchAll(statement)) {
    // `import { type A, type B }` is type-only too.
    const names = m[3];
    const typeOnly = Boolean(m[2]) || (/^\{[\s\S]*\}$/.test(names.trim()) && names.replace(/[{}\s]/g, '').split(',').filter(Boolean).every((n) => n.startsWith('type')));
    found.push({ specifier: m[4], typeOnly });
  }
  for (const m of text.matchAll(/(?:^|[;\n])\s*import\s*['"]([^'"]+)['"]/g)) found.push({ specifier: m[1], typeOnly: false });
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) found.push({ specifier: m[1], typeOnly: false });
  return found.filter((i) => i.specifier.startsWith('.'));
}

const files = sources(src);
const problems = [];
const edges = new Map(files.map((f) => [f, []]));
let edgeCount = 0;
let typeEdges = 0;
for (const file of files) {
  const from = layerOf(file);
  if (!from) {
    problems.push(`${file}: in no layer of src/layers.json`);
    continue;
  }
  for (const { specifier, typeOnly } of importsOf(file)) {
    const target = relative(root, resolve(root, dirname(file), specifier)).split(sep).join('/');
    if (!target.startsWith('src/')) continue;
    if (!existsSync(join(root, target))) {
      problems.push(`${file}: imports ${specifier}, which does not exist`);
      continue;
    }
    const to = layerOf(target);
    edgeCount++;
    if (typeOnly) typeEdges++;
    edges.get(file)?.push(target);
    if (to && to.index > from.index) {
      problems.push(`upward: ${file} (${from.name}) imports ${typeOnly ? 'the types of ' : ''}${target} (${to.name})`);
    }
  }
}

// Cycles: strongly connected components of more than one file (or a file importing itself), Tarjan's algorithm.
let index = 0;
const stack = [];
const state = new Map();
const cycles = [];
function visit(file) {
  const node = { index, low: index, onStack: true };
  index++;
  state.set(file, node);
  stack.push(file);
  for (const next of edges.get(file) ?? []) {
    if (!state.has(next)) {
      visit(next);
      node.low = Math.min(node.low, state.get(next).low);
    } else if (state.get(next).onStack) {
      node.low = Math.min(node.low, state.get(next).index);
    }
  }
  if (node.low === node.index) {
    const component = [];
    let member;
    do {
      member = stack.pop();
      state.get(member).onStack = false;
      component.push(member);
    } while (member !== file);
    if (component.length > 1 || (edges.get(file) ?? []).includes(file)) cycles.push(component.sort());
  }
}
for (const file of files) if (!state.has(file)) visit(file);
for (const cycle of cycles) problems.push(`cycle of ${cycle.length} files: ${cycle.join(' -> ')}`);

const upward = problems.filter((p) => p.startsWith('upward')).length;
if (!values.quiet || problems.length > 0) for (const problem of problems) console.log(problem);
console.log(`layers: ${files.length} files, ${edgeCount} imports (${typeEdges} type-only), ${upward} upward, ${cycles.length} cycles`);
process.exitCode = problems.length === 0 ? 0 : 1;
