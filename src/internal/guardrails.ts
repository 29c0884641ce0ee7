/**
 * Easy mistakes, said out loud: a served server that is also told to listen
 * (a coded error at the call), a wrapper process that will exit with generation
 * 0, and a generation 0 that never calls ready() (warnings with a code: the
 * library never prints by itself).
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { EcdysisError } from '../errors.ts';

// ---------------------------------------------------------------------------
// listen() on a served server

interface Guarded {
  count: number;
  /** The server's own `listen` property before, if it had one (rather than its prototype's). */
  own: PropertyDescriptor | undefined;
}

const guarded = new WeakMap<object, Guarded>();

/**
 * While a listener serves `server`, its listen() throws ERR_ECDYSIS_SERVED
 * instead of binding a second socket (Node's EADDRINUSE crash, or a port that
 * no upgrade hands over). Returns the function that lifts the guard (counted:
 * the last of several listeners serving the same server lifts it).
 */
export function guardListen(server: object): () => void {
  const listen = (server as { listen?: unknown }).listen;
  if (typeof listen !== 'function') return () => {};
  let entry = guarded.get(server);
  if (!entry) {
    entry = { count: 0, own: Object.getOwnPropertyDescriptor(server, 'listen') };
    guarded.set(server, entry);
    Object.defineProperty(server, 'listen', {
      configurable: true,
      writable: true,
      value: function listenOnServedServer(): never {
        throw new EcdysisError(
          'ERR_ECDYSIS_SERVED',
          'this server takes its connections from an ecdysis listener (listener.serve(server)): do not call server.listen() too. ' +
            'The listener owns the socket and hands it to the next generation; ask ecdysis for every address (ecdysis.listenTcp(...)) and serve() each one.',
        );
      },
    });
  }
  entry.count++;
  let lifted = false;
  return () => {
    if (lifted) return;
    lifted = true;
    const current = guarded.get(server);
    if (!current || --current.count > 0) return;
    guarded.delete(server);
    if (current.own) Object.defineProperty(server, 'listen', current.own);
    else delete (server as { listen?: unknown }).listen;
  };
}

// ---------------------------------------------------------------------------
// A wrapper process as parent

/** A process's argv and short name, from /proc (undefined when it cannot be read). */
export interface ProcessInfo {
  pid: number;
  ppid: number;
  argv: string[];
}

export function readProcessInfo(pid: number): ProcessInfo | undefined {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((arg) => arg !== '');
    // The fields after the command name (which may hold spaces and parentheses).
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return { pid, ppid, argv };
  } catch {
    return undefined;
  }
}

export const SHELLS = new Set(['sh', 'bash', 'dash', 'zsh', 'ash', 'busybox']);

/**
 * What a process is, when it is a tool that runs a script in a child and exits
 * when that child exits: the name to show, or undefined.
 */
export function wrapperName(argv: readonly string[]): string | undefined {
  // A process that set process.title (npm: "npm start") shows it as one argument.
  const words = argv.length === 1 ? argv[0]!.split(' ').filter((word) => word !== '') : argv;
  const [command = '', ...args] = words;
  const program = basename(command);
  const script = program.startsWith('node') ? nodeScript(args) : command;
  if (program.startsWith('node') && args.some((arg) => arg === '--watch' || arg.startsWith('--watch-path') || arg === '--watch-preserve-output')) return 'node --watch';
  const patterns: [RegExp, string][] = [
    [/(^|\/)tsx(\/dist\/cli\.[cm]?js)?$/, 'the tsx CLI'],
    [/(^|\/)(npm-cli\.js|npm|npx|npx-cli\.js)$/, 'npm'],
    [/(^|\/)(yarn(\.c?js)?|yarn-[\d.]+\.c?js)$/, 'yarn'],
    [/(^|\/)pnpm(\.c?js)?$/, 'pnpm'],
    [/(^|\/)nodemon(\/bin\/nodemon\.js)?$/, 'nodemon'],
    [/(^|\/)ts-node-dev(\/lib\/bin\.js)?$/, 'ts-node-dev'],
  ];
  for (const [pattern, name] of patterns) if (pattern.test(script)) return name;
  return undefined;
}

/** Node options whose value is the next argument (when not given with '='). */
const NODE_OPTIONS_WITH_VALUE = new Set(['--import', '--require', '-r', '--loader', '--experimental-loader', '--env-file', '--conditions', '-C', '--title', '--watch-path', '--input-type', '--stack-size']);

/** A Node command line's script: the first argument that is neither an option nor an option's value. */
function nodeScript(args: readonly string[]): string {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--') return args[i + 1] ?? '';
    if (!arg.startsWith('-')) return arg;
    if (NODE_OPTIONS_WITH_VALUE.has(arg)) i++;
  }
  return '';
}

/**
 * The wrapper this process runs under, if any: its parent, or the parent of
 * the shell that is its parent (`npm start` runs `sh -c "node app.js"`).
 */
export function findWrapper(ppid: number, read: (pid: number) => ProcessInfo | undefined = readProcessInfo): { name: string; pid: number } | undefined {
  let pid = ppid;
  for (let depth = 0; depth < 3 && pid > 1; depth++) {
    const info = read(pid);
    if (!info) return undefined;
    const name = wrapperName(info.argv);
    if (name) return { name, pid };
    if (!SHELLS.has(basename(info.argv[0] ?? ''))) return undefined;
    pid = info.ppid;
  }
  return undefined;
}

/** Generation 0 started by a wrapper that will exit with it: say so, and the fix. */
export function warnIfWrapped(ppid = process.ppid): void {
  const wrapper = findWrapper(ppid);
  if (!wrapper) return;
  process.emitWarning(
    `this service was started by ${wrapper.name} (pid ${wrapper.pid}), which exits when generation 0 exits: after the first upgrade the new ` +
      'generation is orphaned, and whatever supervises the wrapper (a shell, systemd, a container) sees the service stop. ' +
      'Start it with node itself (`node --import tsx server.ts`, `node server.js`), or under `ecdysis run -- node server.js` in a container.',
    { code: 'ECDYSIS_WRAPPER_PARENT' },
  );
}

// ---------------------------------------------------------------------------
// ready() never called

/**
 * Warns once if generation 0 is still starting `timeoutMs` after create():
 * until ready(), listeners accept nothing (clients wait in the queue) and
 * upgrades are refused; a primary (`workers` of them) has started none of its
 * workers either. Returns the function that cancels the reminder.
 */
export function remindReady(timeoutMs: number, stillStarting: () => boolean, workers?: number): () => void {
  const timer = setTimeout(() => {
    if (!stillStarting()) return;
    const noWorker = workers === undefined ? '' : `, none of the ${workers} workers is started (the primary starts them in ready())`;
    process.emitWarning(
      `ready() has not been called ${timeoutMs} ms (upgradeTimeout) after Ecdysis.create(): until it is, no listener accepts (clients wait in the queue)${noWorker} ` +
        'and upgrades are refused. Call `await ecdysis.ready()` once the service is set up.',
      { code: 'ECDYSIS_NOT_READY' },
    );
  }, timeoutMs);
  timer.unref();
  return () => clearTimeout(timer);
}

// ---------------------------------------------------------------------------
// A drained generation that the application keeps alive

/** How long a drained process may take to end by itself before it is told what holds it. */
export const LINGER_WARNING_MS = 5_000;

/**
 * Once a generation is drained nothing of the library holds the process: if it
 * is still running `delayMs` later, the application holds it (a timer, a pool,
 * a process manager's IPC channel). Its successor is not held back by it (it
 * was told the drain is over), but the process keeps its memory, and under a
 * process manager it looks alive: say what holds it, once. The timer itself
 * never keeps the process alive.
 */
export function warnIfLingering(generation: number, delayMs = LINGER_WARNING_MS): void {
  const timer = setTimeout(() => {
    const counts = new Map<string, number>();
    for (const resource of process.getActiveResourcesInfo()) counts.set(resource, (counts.get(resource) ?? 0) + 1);
    const held = [...counts].map(([resource, n]) => (n > 1 ? `${resource} x${n}` : resource)).join(', ') || 'nothing Node reports (a native addon, or a pending promise kept by a handle)';
    const ipc = process.channel ? ' This process has an IPC channel (a process manager such as pm2 fork mode): it holds the process until process.disconnect().' : '';
    process.emitWarning(
      `generation ${generation} (pid ${process.pid}) was drained ${delayMs} ms ago and is still running, held by: ${held}.${ipc} ` +
        'It serves nothing and no longer holds upgrades back; end what holds it after `await ecdysis.drain()` ' +
        '(clearInterval, pool.end(), server.close()), or call process.exit() there.',
      { code: 'ECDYSIS_LINGERING' },
    );
  }, delayMs);
  timer.unref();
}

/**
 * A primary killed one of its workers that still ran `graceMs` after the drain's
 * deadline: hung in its drain, or drained and kept running by its application
 * (a timer, a pool), which would otherwise outlive its primary, orphaned.
 */
export function warnWorkerKilled(worker: { index: number; pid: number; drained: boolean | undefined; generation: number; graceMs: number }): void {
  const why =
    worker.drained === undefined
      ? 'after it had stepped aside on its own stop signal (and was replaced): hung in its drain, or kept running by its application'
      : worker.drained
        ? 'after its own drain: its application keeps it running (end what holds it after `await ecdysis.drain()`: clearInterval, pool.end(), server.close())'
        : 'and had not finished its drain (a hung worker)';
  process.emitWarning(
    `worker ${worker.index} (pid ${worker.pid}) of generation ${worker.generation} was still running ${worker.graceMs} ms after the drain's deadline, ${why}: killed, so that no worker outlives its primary`,
    { code: 'ECDYSIS_WORKER_KILLED' },
  );
}
