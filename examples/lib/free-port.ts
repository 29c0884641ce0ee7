import { createServer } from 'node:net';

/** A TCP port free on 127.0.0.1 at the time of asking, for a program that takes a fixed port. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
    probe.on('error', reject);
  });
}
