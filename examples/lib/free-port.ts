import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/**
 * The first port of the kernel's ephemeral range (net.ipv4.ip_local_port_range):
 * ports from there on are what connect() picks as a source port, so a port
 * found free there may be taken by any outgoing connection before the program
 * binds it (seen as EADDRINUSE under load).
 */
function ephemeralStart(): number {
  try {
    const start = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(start) && start > 2048 ? start : 32768;
  } catch {
    return 32768;
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/**
 * A TCP port free on 127.0.0.1 at the time of asking, for a program that takes
 * a fixed port: chosen at random below the ephemeral range (from 10000), so
 * that no outgoing connection takes it meanwhile; the kernel's choice (port 0)
 * if none of 50 tries binds.
 */
export async function freePort(): Promise<number> {
  const end = ephemeralStart();
  const start = Math.min(10_000, end - 1_000);
  for (let i = 0; i < 50; i++) {
    const port = start + Math.floor(Math.random() * (end - start));
    if (await bindable(port)) return port;
  }
  return new Promise((resolve, reject) => {
    const probe = createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
    probe.on('error', reject);
  });
}
