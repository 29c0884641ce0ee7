/** The error table, the docs and the public exports stay in sync. */
import test from 'ava';
import { readFileSync } from 'node:fs';
import * as api from '../../src/index.ts';
import { ErrorCodes } from '../../src/index.ts';

const doc = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');

test('every error code is documented, and every documented code exists', (t) => {
  const documented = new Set(doc.match(/ERR_ECDYSIS_[A-Z_]+/g));
  t.deepEqual([...documented].sort(), Object.keys(ErrorCodes).sort());
  for (const code of Object.keys(ErrorCodes)) t.regex(doc, new RegExp(`^\\| \`${code}\` \\|`, 'm'), `${code} has a row in the table`);
});

test('every runtime export and public method is documented', (t) => {
  for (const name of Object.keys(api)) t.true(doc.includes(name), `export ${name}`);
  const methods = ['create', 'listenTcp', 'listenUnix', 'ready', 'upgrade', 'stop', 'partialStop', 'drain', 'events', 'waitForParent', 'exit', 'signal', 'isChild', 'generation'];
  for (const m of methods) t.true(doc.includes(`ecdysis.${m}`) || doc.includes(`Ecdysis.${m}`), m);
  for (const m of ['iterate', 'connections', 'serve', 'accepting', 'connectionCount', 'closed']) t.true(doc.includes(`listener.${m}`), m);
  for (const name of Object.getOwnPropertyNames(api.Ecdysis.prototype).filter((n) => n !== 'constructor')) {
    t.true(doc.includes(`ecdysis.${name}`), `Ecdysis#${name} is documented`);
  }
});

test('EcdysisError has a stable shape', (t) => {
  const error = new api.EcdysisError('ERR_ECDYSIS_CHILD_EXITED', undefined, { exitCode: 3, signal: null, pid: 7 });
  t.is(error.name, 'EcdysisError');
  t.is(error.message, ErrorCodes.ERR_ECDYSIS_CHILD_EXITED);
  t.like(error, { code: 'ERR_ECDYSIS_CHILD_EXITED', exitCode: 3, signal: null, pid: 7 });
  t.true(api.isEcdysisError(error, 'ERR_ECDYSIS_CHILD_EXITED'));
  t.false(api.isEcdysisError(new Error('x')));
});
