/**
 * Load for a TCP relay (examples/tcp-proxy.ts): an upstream that echoes and
 * counts, and clients that each send a payload of varying size on a new
 * connection, read it all back, end, and go again (never retrying).
 */
import type { ExecutionContext } from 'ava';
import { connect, createServer, type Server } from 'node:net';

/** An upstream that echoes, counting bytes and connections. */
export async function echoServer(t: ExecutionContext): Promise<{ port: number; received: () => number; connections: () => number }> {
  let received = 0;
  let connections = 0;
  const server: Server = createServer((socket) => {
    connections++;
    socket.on('data', (chunk) => (received += chunk.length));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  return { port: (server.address() as { port: number }).port, received: () => received, connections: () => connections };
}

export interface RelayStats {
  relays: number;
  sent: number;
  received: number;
  failures: string[];
}

/** `count` clients relaying through `port` until stop(), which resolves once each has finished its relay. */
export function relayClients(port: number, count = 4): { stats: RelayStats; stop(): Promise<void> } {
  const stats: RelayStats = { relays: 0, sent: 0, received: 0, failures: [] };
  let running = true;
  const client = async (seed: number) => {
    for (let i = 0; running; i++) {
      const size = 1 + ((seed * 7919 + i * 104_729) % 65_536);
      await new Promise<void>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let got = 0;
        socket.on('connect', () => {
          stats.sent += size;
          socket.write(Buffer.alloc(size, i % 251));
        });
        socket.on('data', (chunk: Buffer) => {
          got += chunk.length;
          if (got === size) socket.end();
        });
        socket.on('error', (err) => stats.failures.push(err.message));
        socket.on('close', () => {
          stats.received += got;
          if (got === size) stats.relays++;
          else stats.failures.push(`relay ${seed}.${i}: ${got} of ${size} bytes back`);
          resolve();
        });
      });
    }
  };
  const clients = Array.from({ length: count }, (_, i) => client(i + 1));
  return {
    stats,
    async stop() {
      running = false;
      await Promise.all(clients);
    },
  };
}
