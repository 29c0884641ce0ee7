/**
 * Process managers that take generation 0 for the service: pm2 (fork mode),
 * supervisord, runit, s6, and a container's PID 1. Generation 0 hands over and
 * exits at the first upgrade; a manager that watches it sees the service die
 * and starts it again (a second copy, which fails to bind the service's
 * addresses or, with reusePort, binds beside the new generation and serves the
 * old code), or loses track of the new generation; as PID 1 of a container it
 * takes the whole container down with it. `ecdysis run` is the fix under each:
 * it stays the manager's child for the life of the service, follows hand-overs
 * and forwards signals. It says so to its service in RUN_ENV.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { readProcessInfo, SHELLS, type ProcessInfo } from './guardrails.ts';

/** Set by `ecdysis run` for the service it starts: its own pid. Taken out of process.env by generation 0. */
export const RUN_ENV = 'ECDYSIS_RUN';

export interface ProcessManager {
  /** Which one: 'pm2', 'supervisord', 'runit', 's6', 'container'. */
  kind: 'pm2' | 'supervisord' | 'runit' | 's6' | 'container';
  /** How generation 0 stands to it, for the message: `was started by pm2 (app "web", id 0)`. */
  how: string;
  /** What goes wrong at the first upgrade. */
  consequence: string;
  /** The command line that starts the service under `ecdysis run` there. */
  fix: string;
}

const RESTARTS =
  'it takes generation 0 for the service: when generation 0 exits after the first upgrade, it starts the service again (a second copy, ' +
  "which fails to bind the service's addresses with EADDRINUSE or, with reusePort, binds beside the new generation and serves the old " +
  'code), or it loses track of the new generation, which its stop then no longer reaches';
const CONTAINER = '`CMD ["./node_modules/.bin/ecdysis", "run", "--", "node", "server.mjs"]` in the Dockerfile';
const RUN_SCRIPT = '`exec ./node_modules/.bin/ecdysis run -- node server.mjs` in the run script';

/** Names PID 1 has on a host booted by an init that is not a container's entry point (systemd follows MAINPID=). */
const HOST_INITS = new Set(['systemd', 'init']);
/** How far up the tree to look for `ecdysis run` or a manager (through shells and wrappers that exec). */
const MAX_HOPS = 4;

/** A process's short name (/proc/PID/comm: the executable's file name, or what it set with PR_SET_NAME). */
export function readComm(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export interface ProcessReader {
  info: (pid: number) => ProcessInfo | undefined;
  comm: (pid: number) => string | undefined;
}

const PROC: ProcessReader = { info: readProcessInfo, comm: readComm };

/**
 * The manager that would take generation 0 for the service, or undefined: none,
 * or `ecdysis run` is between them (RUN_ENV names an ancestor). pm2 and
 * supervisord are known by the variables they give their children (which a
 * shell in between passes on), runit and s6 by their supervisor's name as the
 * parent (or the parent of a shell that is the parent), a container by PID 1:
 * this process itself, or a parent that is neither systemd nor a host's init.
 */
export function findProcessManager(env: NodeJS.ProcessEnv, self: { pid: number; ppid: number }, read: ProcessReader = PROC): ProcessManager | undefined {
  if (underRun(env, self.ppid, read)) return undefined;
  if (env.pm_id !== undefined && env.pm_exec_path !== undefined) {
    const app = env.name ? `app "${env.name}", id ${env.pm_id}` : `id ${env.pm_id}`;
    return {
      kind: 'pm2',
      how: `was started by pm2 (${app})`,
      consequence: RESTARTS,
      fix: '`pm2 start ./node_modules/.bin/ecdysis --name app --kill-timeout 30000 -- run -- node server.mjs` (in an ecosystem file: `script: "./node_modules/.bin/ecdysis", args: "run -- node server.mjs"`)',
    };
  }
  if (env.SUPERVISOR_ENABLED !== undefined && env.SUPERVISOR_PROCESS_NAME !== undefined) {
    return {
      kind: 'supervisord',
      how: `was started by supervisord (program "${env.SUPERVISOR_PROCESS_NAME}")`,
      consequence: RESTARTS,
      fix: '`command=/srv/app/node_modules/.bin/ecdysis run -- node server.mjs` in its [program:x] section',
    };
  }
  if (self.pid === 1) {
    return {
      kind: 'container',
      how: 'is PID 1 (a container without an init)',
      consequence: 'when generation 0 exits after the first upgrade, the kernel kills every other process of the container (its PID namespace), the new generation included',
      fix: CONTAINER,
    };
  }
  let pid = self.ppid;
  for (let hops = 0; hops < MAX_HOPS && pid > 0; hops++) {
    const info = read.info(pid);
    const names = [read.comm(pid), basename(info?.argv[0] ?? '')].filter((name): name is string => !!name);
    if (pid === 1) {
      if (names.length === 0 || names.some((name) => HOST_INITS.has(name))) return undefined;
      return {
        kind: 'container',
        how: `was started by ${names[0]} as PID 1`,
        consequence: "that is a container's init: it exits when generation 0, its child, exits after the first upgrade, and the container ends, the new generation with it",
        fix: CONTAINER,
      };
    }
    if (names.includes('runsv')) return { kind: 'runit', how: `was started by runit's runsv (pid ${pid})`, consequence: RESTARTS, fix: RUN_SCRIPT };
    if (names.includes('s6-supervise')) return { kind: 's6', how: `was started by s6-supervise (pid ${pid})`, consequence: RESTARTS, fix: RUN_SCRIPT };
    if (!info || !names.some((name) => SHELLS.has(name))) return undefined;
    pid = info.ppid;
  }
  return undefined;
}

/** RUN_ENV names this process's parent, or an ancestor a few hops up. */
function underRun(env: NodeJS.ProcessEnv, ppid: number, read: ProcessReader): boolean {
  const value = env[RUN_ENV];
  if (value === undefined || !/^[1-9]\d*$/.test(value)) return false;
  const run = Number(value);
  let pid = ppid;
  for (let hops = 0; hops < MAX_HOPS && pid > 0; hops++) {
    if (pid === run) return true;
    const info = read.info(pid);
    if (!info) return false;
    pid = info.ppid;
  }
  return false;
}

/**
 * Generation 0 under a manager that would take it for the service: one
 * ECDYSIS_PROCESS_MANAGER warning naming it and `ecdysis run`. Returns whether
 * it warned (the wrapper warning is then left out: one fix at a time). RUN_ENV
 * is taken out of the environment, so that the service's own subprocesses do
 * not believe they run under `ecdysis run`.
 */
export function warnIfManaged(env: NodeJS.ProcessEnv = process.env, self = { pid: process.pid, ppid: process.ppid }, read: ProcessReader = PROC): boolean {
  const manager = findProcessManager(env, self, read);
  delete env[RUN_ENV];
  if (!manager) return false;
  process.emitWarning(
    `generation 0 (pid ${self.pid}) ${manager.how}: ${manager.consequence}. ` +
      `Start the service under \`ecdysis run\`, which stays the manager's child for the life of the service, follows each hand-over and forwards signals: ${manager.fix}.`,
    { code: 'ECDYSIS_PROCESS_MANAGER' },
  );
  return true;
}
