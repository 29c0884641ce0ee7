/**
 * The guardrails' pieces in one process: which parents are wrappers, and the
 * listen() guard on a served server. Real wrappers and a real generation 0
 * that never gets ready run in test/integration/guardrails.test.ts.
 */
import test from 'ava';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { findWrapper, guardListen, wrapperName, type ProcessInfo } from '../../src/internal/guardrails.ts';

test('wrapperName: tools that run a script in a child and exit with it; plain node, a loader flag\'s value and other programs are not', (t) => {
  const cases: [string[], string | undefined][] = [
    [['node', '/app/node_modules/.bin/tsx', 'server.ts'], 'the tsx CLI'],
    [['/usr/bin/node', '/app/node_modules/tsx/dist/cli.mjs', 'watch', 'server.ts'], 'the tsx CLI'],
    [['node', '/usr/bin/npm', 'start'], 'npm'],
    [['node', '/usr/lib/node_modules/npm/bin/npm-cli.js', 'run', 'serve'], 'npm'],
    [['npm', 'start'], 'npm'],
    [['npm start'], 'npm'],
    [['npm run dev'], 'npm'],
    [['node', '/usr/bin/npx', 'tsx', 'server.ts'], 'npm'],
    [['node', '/app/.yarn/releases/yarn-4.1.0.cjs', 'start'], 'yarn'],
    [['node', '/usr/local/bin/pnpm', 'start'], 'pnpm'],
    [['node', '/app/node_modules/.bin/nodemon', 'server.js'], 'nodemon'],
    [['node', '/app/node_modules/nodemon/bin/nodemon.js'], 'nodemon'],
    [['node', '--watch', 'server.js'], 'node --watch'],
    [['node', '/app/node_modules/.bin/ts-node-dev', 'server.ts'], 'ts-node-dev'],
    [['node', '--import', 'tsx', 'server.ts'], undefined],
    [['node', '-r', 'tsx/cjs', '--', 'server.js'], undefined],
    [['node', '/srv/app/server.js'], undefined],
    [['node', '/app/dist/cli/ecdysis.js', 'run', '--', 'node', 'server.js'], undefined],
    [['/lib/systemd/systemd', '--user'], undefined],
    [['bash'], undefined],
    [[], undefined],
  ];
  for (const [argv, expected] of cases) t.is(wrapperName(argv), expected, argv.join(' '));
});

test('findWrapper: the parent, or the wrapper behind the shell npm runs scripts in; unreadable processes and pid 1 end the search', (t) => {
  const table = new Map<number, ProcessInfo>([
    [10, { pid: 10, ppid: 1, argv: ['node', '/usr/bin/npm', 'start'] }],
    [11, { pid: 11, ppid: 10, argv: ['sh', '-c', 'node server.js'] }],
    [20, { pid: 20, ppid: 1, argv: ['/bin/bash'] }],
    [30, { pid: 30, ppid: 1, argv: ['node', '/app/node_modules/.bin/tsx', 'server.ts'] }],
    [40, { pid: 40, ppid: 99, argv: ['sh', '-c', 'x'] }],
  ]);
  const read = (pid: number) => table.get(pid);
  t.deepEqual(findWrapper(11, read), { name: 'npm', pid: 10 });
  t.deepEqual(findWrapper(30, read), { name: 'the tsx CLI', pid: 30 });
  t.is(findWrapper(20, read), undefined, 'an interactive shell started by init');
  t.is(findWrapper(40, read), undefined, 'a parent that cannot be read');
  t.is(findWrapper(1, read), undefined);
});

test('guardListen: listen() on a served server is ERR_ECDYSIS_SERVED at the call; the last of two guards lifted gives listen() back', async (t) => {
  for (const server of [createServer(), createNetServer()]) {
    const liftFirst = guardListen(server);
    const liftSecond = guardListen(server);
    const error = t.throws(() => server.listen(0, '127.0.0.1'), { code: 'ERR_ECDYSIS_SERVED' });
    t.regex(error!.message, /listener\.serve\(server\)/);
    liftFirst();
    liftFirst();
    t.throws(() => server.listen(0, '127.0.0.1'), { code: 'ERR_ECDYSIS_SERVED' }, 'still served by the other listener');
    liftSecond();
    t.false(Object.hasOwn(server, 'listen'), 'the prototype listen() is back');
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.true(server.listening);
    await new Promise((resolve) => server.close(resolve));
  }
});

test('guardListen: a listen() the server had as its own property comes back as it was; objects without listen() are left alone', (t) => {
  const server = createNetServer();
  const own = () => server;
  Object.defineProperty(server, 'listen', { value: own, writable: true, configurable: true });
  guardListen(server)();
  t.is(server.listen, own);
  const sink = { emit: () => true };
  guardListen(sink)();
  t.deepEqual(Object.keys(sink), ['emit']);
});
