/**
 * A UDP echo service with ecdysis: every datagram is answered with its own
 * payload, from the socket it came in on. SIGTERM/SIGINT stop.
 *
 * CONSUME picks how datagrams are read (the datagrams comparison):
 * 'iterator' (default) = for await (const msg of udp) await msg.reply(...);
 * 'observable' = udp.messages().subscribe((msg) => msg.reply(...)). The socket
 * binds 127.0.0.1 on PORT (default 0: the kernel picks) and reports the port
 * in its `serving` record.
 */
import { Ecdysis } from '../../dist/index.js';
import { record } from './lifecycle.mjs';

const env = process.env;
const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
const udp = await ecdysis.listenUdp({ host: '127.0.0.1', port: Number(env.PORT ?? 0) });

const consume = {
  iterator: async () => {
    for await (const msg of udp) await msg.reply(msg.data);
  },
  observable: () => udp.messages().subscribe((msg) => void msg.reply(msg.data)),
}[env.CONSUME ?? 'iterator'];
if (!consume) throw new Error(`unknown CONSUME=${env.CONSUME}`);
void consume();

await ecdysis.ready();
record('serving', { generation: ecdysis.generation, port: udp.port });
await ecdysis.exit;
await ecdysis.drain({ timeout: 5_000 });
