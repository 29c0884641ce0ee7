/** The CLI's side of the control protocol against a server in this process (a seam). */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { request } from '../../src/cli/client.ts';

/** A control server that answers every line and never closes a connection (a real one keeps it for more commands). */
async function holdingServer(t: { teardown(fn: () => void): void }) {
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-cli-'));
  const path = join(dir, 'control.sock');
  const connections: Socket[] = [];
  const closed: Promise<void>[] = [];
  const server = createServer((socket) => {
    connections.push(socket);
    closed.push(new Promise((resolve) => socket.once('close', () => resolve())));
    socket.on('error', () => {});
    socket.on('data', () => socket.write(`${JSON.stringify({ ok: true, pid: 1, generation: 0 })}\n`));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(() => {
    for (const c of connections) c.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, closed, connections };
}

test('status and upgrade close their connection once answered, not at the server\'s idle timeout', async (t) => {
  const server = await holdingServer(t);
  for (const command of ['status', 'upgrade'] as const) {
    const { reply } = await request(server.path, command, 5_000);
    t.like(reply, { ok: true, pid: 1 });
  }
  // The server never closes: only the client can have ended these.
  const guard = new Promise<string>((resolve) => setTimeout(() => resolve('still open after 20 s'), 20_000).unref());
  t.is(await Promise.race([Promise.all(server.closed).then(() => 'closed'), guard]), 'closed');
  t.is(server.closed.length, 2);
});

test('a stop that waits keeps its connection until the server closes it', async (t) => {
  const server = await holdingServer(t);
  const { closed } = await request(server.path, 'stop', 5_000, { awaitClose: true });
  let ended = false;
  void closed.then(() => (ended = true));
  await new Promise((resolve) => setTimeout(resolve, 50));
  t.false(ended, 'still open while the server holds it');
  server.connections[0]!.destroy(); // the stopping process exits
  await closed;
  t.true(ended);
});
