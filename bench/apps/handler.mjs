/**
 * The one request handler every strategy serves: a small response that names
 * the process that produced it (the load generator collects the distinct
 * `x-generation` values, so here they are pids).
 */
const body = Buffer.from('ok\n');

export function handle(_req, res) {
  res.setHeader('x-generation', String(process.pid));
  res.setHeader('content-type', 'text/plain');
  res.setHeader('content-length', body.length);
  res.end(body);
}
