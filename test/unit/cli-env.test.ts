/** `ecdysis upgrade --env/--env-file`: what the CLI sends, and what it refuses before sending anything. */
import test from 'ava';
import { mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { environmentChanges } from '../../src/cli/env-changes.ts';
import { MAX_LINE_BYTES } from '../../src/wire/control-protocol.ts';

const dir = mkdtempSync(join(tmpdir(), 'ecdysis-env-'));

test('an env file: comments and blank lines skipped, quotes and export removed; --env wins; as few `env` lines as fit the line bound', (t) => {
  const file = join(dir, 'a.env');
  writeFileSync(file, '# a comment\n\nexport A=1\nB="two words"\nC=\'x=y\'\r\nD=\n');
  const lines = environmentChanges(['B=flag', 'E=5'], file);
  t.deepEqual(lines, ['env {"A":"1","B":"flag","C":"x=y","D":"","E":"5"}']);
  const many = environmentChanges(Array.from({ length: 30 }, (_, i) => `V${i}=${'z'.repeat(300)}`), undefined);
  t.true(many.length > 1);
  t.true(many.every((line) => Buffer.byteLength(line) <= MAX_LINE_BYTES));
  t.is(many.map((line) => Object.keys(JSON.parse(line.slice(4)) as object).length).reduce((a, b) => a + b), 30);
});

test('refused with ERR_ECDYSIS_INVALID_OPTION: a bad name, no "=", a file too large, a symlink, a value longer than a line', (t) => {
  const refused = (fn: () => unknown, message: RegExp) => t.throws(fn, { instanceOf: Error, message }) && t.is((t.throws(fn) as { code?: string }).code, 'ERR_ECDYSIS_INVALID_OPTION');
  refused(() => environmentChanges(['1BAD=x'], undefined), /not an environment variable's name/);
  refused(() => environmentChanges(['NOVALUE'], undefined), /give KEY=VALUE/);
  const big = join(dir, 'big.env');
  writeFileSync(big, `BIG=${'x'.repeat(1024 * 1024)}\n`);
  refused(() => environmentChanges([], big), /is 1048581 bytes: at most 65536 bytes/);
  const link = join(dir, 'link.env');
  symlinkSync(big, link);
  refused(() => environmentChanges([], link), /ELOOP/);
  refused(() => environmentChanges([`LONG=${'y'.repeat(5000)}`], undefined), /longer than a control line allows/);
  refused(() => environmentChanges(Array.from({ length: 300 }, (_, i) => `V${i}=1`), undefined), /at most 256 variables/);
});
