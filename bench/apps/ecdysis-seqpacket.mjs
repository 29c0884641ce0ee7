/**
 * A Unix seqpacket echo service with ecdysis on SOCKET_PATH: every message of
 * every connection is sent back on it, awaiting each send (backpressure), as
 * docs/api.md shows. SIGTERM/SIGINT stop.
 */
import { Ecdysis } from '../../dist/index.js';
import { record } from './lifecycle.mjs';

const path = process.env.SOCKET_PATH;
if (!path) throw new Error('SOCKET_PATH is required');
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
const listener = await ecdysis.listenUnixSeqpacket(path);

async function echo(conn) {
  try {
    for await (const m of conn) await conn.send(m);
  } catch {
    // The client went away with echoes in flight (EPIPE): nothing to answer.
  }
}

void (async () => {
  for await (const conn of listener) void echo(conn);
})();

await ecdysis.ready();
record('serving', { generation: ecdysis.generation, path });
await ecdysis.exit;
await ecdysis.drain({ timeout: 5_000 });
