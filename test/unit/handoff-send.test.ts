import test from 'ava';
import { Handoff, HandoffSender } from '../../src/generation/handoff-send.ts';

test('a Handoff refuses state, files and sockets once the upgrade is decided (a handler still running after a failure moves nothing)', async (t) => {
  const handoff = new Handoff(2, 1234, 1024);
  handoff.state({ a: 1 });
  handoff.settle('failed');
  t.is(await handoff.outcome, 'failed');
  t.throws(() => handoff.state({ a: 2 }), { code: 'ERR_ECDYSIS_HANDOFF', message: /the upgrade to generation 2 is over/ });
  t.throws(() => handoff.file('log', 0), { code: 'ERR_ECDYSIS_HANDOFF', message: /is over/ });
  await t.throwsAsync(handoff.socket('s', {} as never), { code: 'ERR_ECDYSIS_HANDOFF', message: /is over/ });
});

test('a HandoffSender aborted while its handlers run sends nothing, and is decided once', async (t) => {
  const sender = new HandoffSender(2, 1024);
  let release!: () => void;
  const sent: unknown[] = [];
  const channel = { send: async (header: unknown) => void sent.push(header) } as never;
  let refused: unknown;
  const handler = (handoff: Handoff) =>
    new Promise<void>((resolve) => {
      release = () => {
        try {
          handoff.state({ late: true });
        } catch (err) {
          refused = err;
        }
        resolve();
      };
    });
  const running = sender.run([handler], channel, 1234);
  await new Promise((resolve) => setImmediate(resolve));
  sender.abort();
  sender.commit(); // too late: aborted already
  release();
  await t.throwsAsync(running, { code: 'ERR_ECDYSIS_HANDOFF', message: /decided before the onHandoff handlers returned/ });
  t.like(refused, { code: 'ERR_ECDYSIS_HANDOFF' });
  t.deepEqual(sent, []);
});
