/**
 * The one request handler every strategy serves: a small response that names
 * the process that produced it (the load generator collects the distinct
 * `x-generation` values, so here they are pids).
 */
const body = Buffer.from('ok\n');

/** BUSY_MS: each request first computes for that long (a CPU-bound handler, for the multi-core figures). */
const busyMs = Number(process.env.BUSY_MS ?? 0);

export function handle(_req, res) {
  if (busyMs > 0) {
    const until = performance.now() + busyMs;
    while (performance.now() < until);
  }
  res.setHeader('x-generation', String(process.pid));
  res.setHeader('content-type', 'text/plain');
  res.setHeader('content-length', body.length);
  res.end(body);
}

/**
 * The same for HTTP/2 (compatibility API), and GET /slow?ms=N answered after N
 * ms: the long streams an upgrade must let finish.
 */
export function handleHttp2(req, res) {
  const slow = req.url.startsWith('/slow') ? Math.min(Number(new URL(req.url, 'http://x').searchParams.get('ms') ?? 100), 10_000) : 0;
  if (slow === 0) return handle(req, res);
  const timer = setTimeout(() => handle(req, res), slow);
  res.on('close', () => clearTimeout(timer));
}
