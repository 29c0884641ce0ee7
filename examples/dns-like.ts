/**
 * A DNS-like UDP service (a toy protocol, not DNS): "<id> <name>" is answered
 * with "<id> <name> <address> <generation>". Upgrade it under load: every
 * question is answered exactly once, by one generation or the next.
 *
 *   PORT=5353 node --import tsx examples/dns-like.ts
 *   kill -HUP <pid>
 */
import { Ecdysis } from 'ecdysis';

const log = (record: Record<string, unknown>) => process.stdout.write(`${JSON.stringify({ ...record, gen: ecdysis.generation, pid: process.pid })}\n`);

const ecdysis = await Ecdysis.create();
ecdysis.events().subscribe((event) => log({ type: 'event', event: event.type, ...('error' in event ? { code: event.error.code } : {}) }));
const dns = await ecdysis.listenUdp({ host: process.env.HOST ?? '127.0.0.1', port: Number(process.env.PORT ?? 5353) });

let answered = 0;
void (async () => {
  for await (const question of dns) {
    const [id, name] = question.data.toString().split(' ');
    if (!id || !name) continue; // not a question: no answer
    await question.reply(`${id} ${name} ${address(name)} ${ecdysis.generation}`).catch(() => {});
    answered++;
  }
})();

await ecdysis.ready();
log({ type: 'ready', port: dns.port });
await ecdysis.exit;
await ecdysis.drain({ timeout: 1_000 });
log({ type: 'drained', answered });

/** A made-up, stable address per name. */
function address(name: string): string {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return `10.${(hash >> 16) & 255}.${(hash >> 8) & 255}.${hash & 255}`;
}
