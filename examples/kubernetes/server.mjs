// A service as it runs in a Kubernetes pod: `ecdysis run` is PID 1 (see
// deployment.yaml), this is its main process, and a new generation of it can
// be started in place with `kubectl exec <pod> -- ecdysis upgrade --socket /run/app/control.sock`.
import { createServer } from 'node:http';
import { Ecdysis } from 'ecdysis';

const control = { socket: '/run/app/control.sock' };
const ecdysis = await Ecdysis.create({
  upgradeOn: ['SIGHUP', control],
  stopOn: ['SIGTERM', control],
  // Lame duck: on SIGTERM (the kubelet's), /readyz answers 503 at once and the service
  // keeps serving this long, while the endpoints controller takes the pod out of the
  // Service (readiness period 1 s here: 5 s is ample), then it stops and drains.
  stopDelay: Number(process.env.STOP_DELAY_MS ?? 5_000),
  // /livez, /readyz and /metrics for the kubelet and Prometheus, on their own port.
  probes: { host: '0.0.0.0', port: Number(process.env.PROBES_PORT ?? 9090) },
});
const web = await ecdysis.listenTcp({ host: '0.0.0.0', port: Number(process.env.PORT ?? 8080) });
web.serve(createServer((req, res) => res.end(`hello from generation ${ecdysis.generation}\n`)));
await ecdysis.ready();

await ecdysis.exit;
await ecdysis.drain({ timeout: Number(process.env.DRAIN_TIMEOUT_MS ?? 30_000) });
