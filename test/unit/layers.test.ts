/** The layer check (scripts/check-layers.mjs): the tree passes it, and it catches what it is for. */
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const script = fileURLToPath(new URL('../../scripts/check-layers.mjs', import.meta.url));

function check(root?: string): { code: number | null; out: string } {
  const result = spawnSync(process.execPath, [script, ...(root ? ['--root', root] : [])], { encoding: 'utf8' });
  return { code: result.status, out: result.stdout + result.stderr };
}

/** A small tree with the given files, under src/, and a layers.json of two layers. */
function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), 'ecdysis-layers-'));
  const layers = { layers: [{ name: 'low', paths: ['src/low/'] }, { name: 'high', paths: ['src/high/'] }] };
  files['src/layers.json'] = JSON.stringify(layers);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(dirname(join(root, path)), { recursive: true });
    writeFileSync(join(root, path), text);
  }
  return root;
}

test('the library itself: no upward import and no cycle, type imports counted', (t) => {
  const { code, out } = check();
  t.is(code, 0, out);
  t.regex(out, / 0 upward, 0 cycles$/m);
});

test('an upward import fails the check, a type-only one too; a downward one passes', (t) => {
  const ok = check(tree({ 'src/low/a.ts': 'export const a = 1;\n', 'src/high/b.ts': "import { a } from '../low/a.ts';\nexport const b = a;\n" }));
  t.is(ok.code, 0, ok.out);
  const up = check(tree({ 'src/low/a.ts': "import type { B } from '../high/b.ts';\nexport type A = B;\n", 'src/high/b.ts': 'export type B = number;\n' }));
  t.is(up.code, 1);
  t.regex(up.out, /^upward: src\/low\/a\.ts \(low\) imports the types of src\/high\/b\.ts \(high\)$/m);
  const multiLine = check(tree({ 'src/low/a.ts': "import {\n  type B,\n} from '../high/b.ts';\nexport type A = B;\n", 'src/high/b.ts': 'export type B = number;\n' }));
  t.is(multiLine.code, 1, 'an import spread over several lines is seen');
});

test('a cycle fails the check, within one layer too; a file in no layer fails it', (t) => {
  const cycle = check(tree({ 'src/low/a.ts': "import type { B } from './b.ts';\nexport type A = B;\n", 'src/low/b.ts': "import type { A } from './a.ts';\nexport type B = A | 1;\n" }));
  t.is(cycle.code, 1);
  t.regex(cycle.out, /^cycle of 2 files: src\/low\/a\.ts -> src\/low\/b\.ts$/m);
  const stray = check(tree({ 'src/elsewhere.ts': 'export {};\n' }));
  t.is(stray.code, 1);
  t.regex(stray.out, /src\/elsewhere\.ts: in no layer/);
});
