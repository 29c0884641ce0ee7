import test from 'ava';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/internal/native.ts';

const flags = { reuseAddr: true, reusePort: false, ipv6Only: false };

test('listenTcp binds, listens and is close-on-exec; describe tells what it is', (t) => {
  const fd = native().listenTcp('127.0.0.1', 0, 16, flags);
  t.teardown(() => native().close(fd));
  const d = native().describe(fd);
  t.like(d, { socket: true, domain: 'inet', type: 'stream', listening: true, address: '127.0.0.1', cloexec: true });
  t.true(d.port! > 0);
});

test('IPv6 with IPV6_V6ONLY', (t) => {
  const fd = native().listenTcp('::1', 0, 16, { ...flags, ipv6Only: true });
  t.teardown(() => native().close(fd));
  t.like(native().describe(fd), { domain: 'inet6', address: '::1' });
});

test('system errors look like Node\'s own', (t) => {
  const fd = native().listenTcp('127.0.0.1', 0, 16, flags);
  t.teardown(() => native().close(fd));
  const port = native().describe(fd).port!;
  const error = t.throws(() => native().listenTcp('127.0.0.1', port, 16, flags)) as NodeJS.ErrnoException;
  t.is(error.code, 'EADDRINUSE');
  t.is(error.errno, -98);
  t.is(error.syscall, 'bind');
  t.is(error.message, `bind EADDRINUSE 127.0.0.1:${port}`);
  t.throws(() => native().describe(987_654), { code: 'EBADF', message: 'fstat EBADF' });
  t.throws(() => native().dupCloexec(987_654), { code: 'EBADF' });
  t.throws(() => native().listenTcp('localhost', 0, 16, flags), { code: 'ERR_INVALID_IP_ADDRESS' });
  t.throws(() => native().listenTcp('127.0.0.1', 70_000, 16, flags), { instanceOf: RangeError });
  t.throws(() => native().describe(-1), { code: 'ERR_INVALID_ARG_TYPE' });
});

test('Unix stream sockets: path and abstract name; a too long path is ENAMETOOLONG', (t) => {
  const path = join(mkdtempSync(join(tmpdir(), 'ecdysis-unit-')), 's.sock');
  const fd = native().listenUnix(path, 16);
  const abstract = native().listenUnix(`\0ecdysis-unit-${process.pid}`, 16);
  t.teardown(() => {
    native().close(fd);
    native().close(abstract);
  });
  t.like(native().describe(fd), { domain: 'unix', type: 'stream', listening: true, path });
  t.is(native().describe(abstract).path, `\0ecdysis-unit-${process.pid}`);
  t.throws(() => native().listenUnix(`/tmp/${'x'.repeat(200)}`, 16), { code: 'ENAMETOOLONG', message: /^bind ENAMETOOLONG/ });
});

test('dupCloexec gives a distinct close-on-exec fd for the same socket; setCloexec toggles', (t) => {
  const fd = native().listenTcp('127.0.0.1', 0, 16, flags);
  const copy = native().dupCloexec(fd);
  t.teardown(() => {
    native().close(fd);
    native().close(copy);
  });
  t.not(copy, fd);
  t.is(native().describe(copy).inode, native().describe(fd).inode);
  native().setCloexec(copy, false);
  t.false(native().describe(copy).cloexec);
  native().setCloexec(copy, true);
  t.true(native().describe(copy).cloexec);
});
