/**
 * An application that already exposes its own metrics with prom-client adds
 * ecdysis's to the same registry: one collector reads `ecdysis.metrics()` at
 * each scrape. The counters go on across upgrades, so a dashboard sees one
 * service, not a new process at each upgrade.
 *
 *   node --import tsx examples/prometheus.ts      (PORT=8080, METRICS_PORT=9100)
 *   curl localhost:9100/metrics
 *
 * Logs one JSON line on stdout when each generation is ready (and, with
 * EVENTS=json, one per lifecycle event).
 */
import { createServer } from 'node:http';
import { Ecdysis, type MetricFamily } from 'ecdysis';
import client from 'prom-client';
import { logLifecycle } from './lib/lifecycle-log.ts';

const ecdysis = await Ecdysis.create({ upgradeOn: ['SIGHUP'], stopOn: ['SIGTERM', 'SIGINT'] });
logLifecycle(ecdysis, 'prometheus');
const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });
const requests = new client.Counter({ name: 'app_requests_total', help: 'Requests answered by this service.', registers: [registry] });

/**
 * Each ecdysis family as a prom-client metric whose collect() copies its
 * current samples: a counter that goes on from another process's count is
 * reset and increased by that count at each scrape.
 */
function register(family: MetricFamily): void {
  const labelNames = [...new Set(family.samples.flatMap((s) => Object.keys(s.labels)))];
  const now = () => ecdysis.metrics().find((f) => f.name === family.name)?.samples ?? [];
  if (family.type === 'counter') {
    new client.Counter({
      name: family.name,
      help: family.help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        for (const sample of now()) this.inc(sample.labels, sample.value);
      },
    });
  } else {
    new client.Gauge({
      name: family.name,
      help: family.help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        for (const sample of now()) this.set(sample.labels, sample.value);
      },
    });
  }
}
for (const family of ecdysis.metrics()) register(family);

const web = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.PORT ?? 8080) });
web.serve(
  createServer((_req, res) => {
    requests.inc();
    res.end(`hello from generation ${ecdysis.generation}\n`);
  }),
);
const metrics = await ecdysis.listenTcp({ host: '127.0.0.1', port: Number(process.env.METRICS_PORT ?? 9100) });
metrics.serve(
  createServer(async (_req, res) => {
    res.setHeader('content-type', registry.contentType);
    res.end(await registry.metrics());
  }),
);

await ecdysis.ready();
process.stdout.write(`${JSON.stringify({ type: 'ready', port: web.port, metricsPort: metrics.port, gen: ecdysis.generation, pid: process.pid })}\n`);
await ecdysis.exit;
await ecdysis.drain({ timeout: 30_000 });
