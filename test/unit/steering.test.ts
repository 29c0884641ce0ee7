/**
 * The steering program of a worker group's SO_REUSEPORT sockets
 * (src/generation/steering.ts), on real sockets of this kernel: which socket
 * of the group each new connection lands in, by the accept queue it waits in.
 */
import test from 'ava';
import { connect, type Socket } from 'node:net';
import { steeringProgram } from '../../src/generation/steering.ts';
import { native } from '../../src/internal/native.ts';

const flags = { reuseAddr: true, reusePort: true, ipv6Only: false, freebind: false, transparent: false, recvBufferSize: 0, sendBufferSize: 0, fastOpen: 0, deferAccept: 0 };

/** `members` listening sockets of one group on `host`, in the order they joined it. */
function group(t: { teardown(fn: () => void): void }, host: string, members: number): { fds: number[]; port: number } {
  const fds = [native().listenTcp(host, 0, 1024, flags)];
  const port = native().describe(fds[0]!).port!;
  for (let i = 1; i < members; i++) fds.push(native().listenTcp(host, port, 1024, flags));
  t.teardown(() => fds.forEach((fd) => native().close(fd)));
  return { fds, port };
}

/** Open `n` connections from `from`; how many wait in each socket of the group. */
async function landings(fds: number[], port: number, from: string, n: number): Promise<number[]> {
  const before = fds.map((fd) => native().acceptQueueLength(fd));
  const sockets: Socket[] = [];
  await Promise.all(Array.from({ length: n }, () => new Promise<void>((resolve, reject) => sockets.push(connect({ port, host: from }, resolve).on('error', reject)))));
  // Established on the client's side means queued on ours (loopback: the same turn of the stack).
  const after = fds.map((fd, i) => native().acceptQueueLength(fd) - before[i]!);
  sockets.forEach((s) => s.destroy());
  return after;
}

for (const [host, from] of [['127.0.0.1', '127.0.0.1'], ['::', '127.0.0.1'], ['::', '::1']] as const) {
  test(`bound to ${host}, connecting from ${from}: every socket serving gets a share, a missing one nothing`, async (t) => {
    const { fds, port } = group(t, host, 4);
    native().attachReuseportProgram(fds[0]!, steeringProgram(4, [0, 1, 2, 3]));
    const all = await landings(fds, port, from, 400);
    t.true(all.every((n) => n > 40), `all serving: ${all.join(' ')}`);
    native().attachReuseportProgram(fds[0]!, steeringProgram(4, [0, 1, 3]));
    const without2 = await landings(fds, port, from, 300);
    t.is(without2[2], 0, `index 2 missing: ${without2.join(' ')}`);
    t.true([0, 1, 3].every((i) => without2[i]! > 40), `its share spread over the others: ${without2.join(' ')}`);
    native().attachReuseportProgram(fds[0]!, steeringProgram(4, [2]));
    t.deepEqual(await landings(fds, port, from, 50), [0, 0, 50, 0]);
  });
}

test('the program is checked: a group of 1 to 255, serving indices inside it, at least one', (t) => {
  t.throws(() => steeringProgram(0, [0]), { instanceOf: RangeError });
  t.throws(() => steeringProgram(256, [0]), { instanceOf: RangeError });
  t.throws(() => steeringProgram(2, []), { instanceOf: RangeError });
  t.throws(() => steeringProgram(2, [2]), { instanceOf: RangeError });
  t.throws(() => steeringProgram(2, [0.5]), { instanceOf: RangeError });
  t.is(steeringProgram(64, [0]).length % 4, 0);
});

test('attachReuseportProgram refuses what is not a program, and what the kernel refuses, with a coded error', (t) => {
  const { fds } = group(t, '127.0.0.1', 1);
  t.throws(() => native().attachReuseportProgram(fds[0]!, []), { instanceOf: RangeError });
  t.throws(() => native().attachReuseportProgram(fds[0]!, [1, 2, 3]), { instanceOf: RangeError });
  t.throws(() => native().attachReuseportProgram(fds[0]!, ['x', 0, 0, 0] as unknown as number[]), { instanceOf: TypeError });
  // A jump past the end: the kernel's checker refuses it.
  t.throws(() => native().attachReuseportProgram(fds[0]!, [0x05, 0, 0, 100]), { code: 'EINVAL' });
});
