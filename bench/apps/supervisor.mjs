/**
 * A socket-holding supervisor, the simplest fd-passing restart: it holds the
 * listening socket on fd 3 (handed to it by whoever started it) without ever
 * accepting on it, and runs plain-http.mjs workers that serve it (LISTEN_FD=3).
 * SIGHUP: start a new worker, wait for its "serving" line, SIGTERM the old one
 * (which closes its server and exits when its connections are gone). There is
 * no readiness protocol beyond that line and no draining protocol: the old
 * worker's shutdown is Node's server.close(). SIGTERM: stop the worker, exit.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const workerScript = fileURLToPath(new URL('./plain-http.mjs', import.meta.url));
let current = startWorker();
let stopping = false;

function startWorker() {
  const child = spawn(process.execPath, [workerScript], {
    stdio: ['ignore', 'pipe', 'inherit', 3],
    env: { ...process.env, LISTEN_FD: '3' },
  });
  const serving = new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => line === 'serving' && resolve());
    child.once('exit', (code, signal) => reject(new Error(`worker ${child.pid} exited (${code ?? signal}) before serving`)));
  });
  serving.catch(() => {});
  return { child, serving };
}

process.on('SIGHUP', async () => {
  if (stopping) return;
  const previous = current;
  const next = startWorker();
  try {
    await next.serving;
  } catch (err) {
    process.stderr.write(`supervisor: ${err.message}; keeping pid ${previous.child.pid}\n`);
    return;
  }
  current = next;
  previous.child.kill('SIGTERM');
});

process.on('SIGTERM', () => {
  stopping = true;
  current.child.once('exit', () => process.exit(0));
  current.child.kill('SIGTERM');
});
