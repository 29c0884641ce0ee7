/**
 * HTTP/2 across upgrades, with real generations and a load process of its own
 * that never retries a stream: sessions get GOAWAY when their generation stops
 * accepting, the streams in flight finish, new streams go to a new session on
 * the new generation, and every old generation is gone long before its deadline.
 */
import test from 'ava';
import { request } from 'node:https';
import { startLoadProcess } from '../../examples/lib/load-runner.ts';
import { totalFailures } from '../../examples/lib/http-load.ts';
import { startGenerations, upgrades } from '../helpers/generations.ts';
import { selfSignedCertificate } from '../helpers/tls.ts';
import type { DrainResult } from '../../src/index.ts';

const DRAIN_TIMEOUT = 20_000;

for (const secure of [false, true]) {
  const count = secure ? 5 : 10;
  test(`HTTP/2${secure ? ' over TLS (HTTP/1.1 allowed too)' : ' cleartext'}: ${count} upgrades under 4 sessions of 20 concurrent streams (every fifth 500 ms long): 0 failed streams, each old generation drained by GOAWAY long before its deadline`, async (t) => {
    const certificate = secure ? selfSignedCertificate() : undefined;
    const g = startGenerations(t, 'http2-service.ts', {
      FIXTURE_DRAIN_TIMEOUT: String(DRAIN_TIMEOUT),
      ...(certificate ? { FIXTURE_TLS_KEY: certificate.keyPath, FIXTURE_TLS_CERT: certificate.certPath } : {}),
    });
    const port = (await g.ready(0)).port as number;
    const load = startLoadProcess({
      protocol: 'http2',
      port,
      sessions: 4,
      streamsPerSession: 20,
      slowPath: '/slow?ms=500',
      durationMs: 240_000,
      ...(certificate ? { ca: certificate.cert.toString() } : {}),
    });
    t.teardown(() => load.kill());
    await load.started;
    await upgrades(g, count);
    // HTTP/1.1 on the same TLS port, served by the newest generation.
    if (certificate) {
      const body = await new Promise<string>((resolve, reject) => {
        request({ host: '127.0.0.1', port, path: '/', ca: certificate.cert, servername: 'localhost' }, (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
          res.on('end', () => resolve(text));
        })
          .on('error', reject)
          .end();
      });
      t.is(body, `hello ${count} over HTTP/1.1\n`);
    }
    const report = await load.stop();
    t.log(`${report.ok} streams ok of ${report.requests} (${report.resentUnprocessed} refused unprocessed by the client and sent again), ${report.connectionsOpened} sessions opened; generations ${report.generations.join(",")}`);
    t.is(totalFailures(report), 0, report.errors.join("\n"));
    t.true(report.generations.length >= count, 'streams were answered by most generations');
    const drains = g.records.filter((r) => r.type === 'drained').map((r) => r.result as DrainResult);
    t.is(drains.length, count, 'every old generation drained');
    for (const drain of drains) {
      t.false(drain.timedOut);
      t.is(drain.destroyed, 0);
      t.is(drain.streamsDestroyed, 0);
      t.is(drain.completed + drain.closedIdle, drain.connections, 'every connection accounted for');
      t.true(drain.sessions > 0 && drain.sessions <= drain.connections);
      t.true(drain.elapsedMs < DRAIN_TIMEOUT / 4, `drained in ${Math.round(drain.elapsedMs)} ms`);
    }
  });
}
