'use strict';
/*
 * Usage: node check-addon.cjs PATH/TO/ecdysis.node
 *
 * Loads one addon binary directly (not through node-gyp-build, which would
 * pick the one for this host) and exercises what differs between a prebuild
 * and a build from source: the dynamic loader resolving every symbol, a
 * syscall whose glibc symbol the prebuilds replace (fstat, via describe), a
 * C++ exception unwinding to a JavaScript error (EADDRINUSE), and the libuv
 * poll handle delivering a datagram. Prints one JSON line; exits 1 on a
 * failed check. Plain CommonJS, no dependencies: it runs on any Node,
 * including an arm64 one under qemu.
 */
const assert = require('node:assert/strict');

async function main() {
  const file = process.argv[2];
  if (!file) throw new Error('usage: node check-addon.cjs ADDON.node');
  const addon = require(require('node:path').resolve(file));
  const flags = { reuseAddr: false, reusePort: false, ipv6Only: false };

  const fd = addon.listenTcp('127.0.0.1', 0, 16, flags);
  const description = addon.describe(fd);
  assert.equal(description.socket, true);
  assert.equal(description.listening, true);
  assert.equal(description.cloexec, true);
  assert.ok(description.port > 0);

  // A C++ throw in the addon must arrive as Node's own error shape.
  let error;
  try {
    addon.listenTcp('127.0.0.1', description.port, 16, flags);
  } catch (err) {
    error = err;
  }
  assert.ok(error, 'a second bind of the same port throws');
  assert.equal(error.code, 'EADDRINUSE');
  assert.equal(error.syscall, 'bind');
  assert.throws(() => addon.describe(987654), { code: 'EBADF' });

  const copy = addon.dupCloexec(fd);
  assert.equal(addon.describe(copy).port, description.port);
  addon.close(copy);
  addon.close(fd);

  // The poll handle: one datagram from a plain sendto to a PacketSocket.
  const receiver = addon.bindUdp('127.0.0.1', 0, {});
  const port = addon.describe(receiver).port;
  const sender = addon.bindUdp('127.0.0.1', 0, {});
  const received = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no datagram within 10 s')), 10_000);
    const socket = new addon.PacketSocket(receiver, 'datagram', {
      onMessage(data) {
        clearTimeout(timer);
        socket.close();
        resolve(data.toString());
      },
      onError: reject,
    });
    socket.startReading();
    addon.sendDatagram(sender, Buffer.from('ping'), '127.0.0.1', port);
  });
  assert.equal(received, 'ping');
  addon.close(sender);

  console.log(JSON.stringify({ ok: true, arch: process.arch, node: process.version, file }));
}

main().catch((err) => {
  console.log(JSON.stringify({ ok: false, arch: process.arch, node: process.version, error: String(err && err.stack) }));
  process.exitCode = 1;
});
