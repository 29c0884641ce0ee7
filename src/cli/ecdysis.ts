#!/usr/bin/env node
/**
 * `ecdysis`: upgrade, stop or inspect a running service, or supervise it as PID 1.
 *
 *   ecdysis upgrade --socket PATH [--env KEY=VALUE]... [--env-file FILE] [--timeout MS] [--server-uid UID]
 *   ecdysis rollback --socket PATH [--timeout MS] [--server-uid UID]
 *   ecdysis upgrade --pid-file FILE [--signal SIGHUP] [--timeout MS]
 *   ecdysis stop    --socket PATH [--wait] [--timeout MS] [--server-uid UID]
 *   ecdysis stop    --pid-file FILE [--signal SIGTERM] [--wait] [--timeout MS]
 *   ecdysis status  --socket PATH [--json] [--server-uid UID]
 *   ecdysis run [--notify] -- COMMAND [ARGS...]
 *
 * Exit status: 0 done; 1 the operation failed (the error code is printed);
 * 2 a usage error, the service could not be reached, or what answered (the
 * server at PATH, the process FILE names) is not believed (client.ts, pid-file.ts).
 */
import { constants } from 'node:os';
import { parseArgs } from 'node:util';
import type { ControlReply } from '../wire/control-protocol.ts';
import { ConnectionError, ControlConnection, NoAnswerError, UntrustedServerError, request, type ConnectOptions } from './client.ts';
import { EnvChangeError, environmentChanges } from './env-changes.ts';
import { PidFileError, Target, readPidFile, targetProblem } from './pid-file.ts';
import { localMode } from '../internal/local-mode.ts';
import { printable, printableJson } from './printable.ts';
import { alive } from './proc.ts';
import { supervise } from './run.ts';

const USAGE = `usage:
  ecdysis upgrade --socket PATH [--timeout MS]        upgrade (once the previous generation has drained, if it must);
                                                      prints the new pid (exit 0) or the error code (exit 1)
    [--env KEY=VALUE]... [--env-file FILE]            the next generation starts with these variables changed (and
                                                      passes them on); FILE has KEY=VALUE lines (# comments); values
                                                      are never printed; at most 256 variables, 64 KiB in all
  ecdysis rollback --socket PATH [--timeout MS]       the previous generation, while it still runs (draining or in
                                                      its probation), takes the service back; prints its pid
  ecdysis upgrade --pid-file FILE [--signal SIGHUP] [--timeout MS]
                                                      signal, then wait for the PID file to name a new process;
                                                      a signal cannot report a failure: only the timeout tells
  ecdysis stop --socket PATH [--wait] [--timeout MS]  stop gracefully; --wait returns once the process is gone
  ecdysis stop --pid-file FILE [--signal SIGTERM] [--wait] [--timeout MS]
  ecdysis status --socket PATH [--json]               pid, generation, state, listeners, workers
  ecdysis run [--notify] -- COMMAND [ARGS...]         run COMMAND as a supervised service (PID 1 in a container):
                                                      follows MAINPID= hand-overs, forwards signals, reaps orphans,
                                                      exits with the service's status; --notify relays readiness
                                                      to the service manager of ecdysis run itself (systemd)
  --server-uid UID (with --socket, repeatable)        also believe a server running as UID; by default only root,
                                                      this user, or the owner of the socket file (when nobody else
                                                      can write its directory) are believed
PATH is a filesystem path or @name (an abstract name). FILE is never read through a symlink; it must name a pid
from 2 to pid_max, of a process in this command's cgroup, or of one running as the file's owner with ecdysis
loaded (as root, the file must also be root's, in directories only root can write).
exit status: 0 done, 1 the operation failed, 2 usage or connection error, or a server or process not believed`;

class UsageError extends Error {}

/** One line of output; what came from a server is in it, so control characters are escaped (printable.ts). */
const out = (line: string) => process.stdout.write(`${printable(line)}\n`);
const err = (line: string) => process.stderr.write(`${printable(line)}\n`);
/** Text of our own, several lines. */
const usage = (stream: NodeJS.WriteStream, text: string) => stream.write(`${text}\n`);

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    usage(process.stdout, USAGE);
    return command === undefined ? 2 : 0;
  }
  if ((command === 'run' || rest.some((arg) => arg === '--pid-file' || arg.startsWith('--pid-file='))) && localMode()) {
    // Off Linux (or with ECDYSIS_LOCAL=1): no addon, no /proc to check a pid by, no subreaper.
    throw new Error(`${command === 'run' ? 'ecdysis run' : '--pid-file'} needs Linux (this command runs in local mode, ERR_ECDYSIS_UNSUPPORTED): ${command === 'run' ? 'run the service directly' : 'use --socket, or kill(1)'}`);
  }
  if (command === 'run') {
    const separator = rest.indexOf('--');
    const flags = separator === -1 ? rest : rest.slice(0, separator);
    const program = separator === -1 ? [] : rest.slice(separator + 1);
    const unknown = flags.filter((f) => f !== '--notify');
    if (unknown.length > 0 || program.length === 0) throw new UsageError(`ecdysis run [--notify] -- COMMAND [ARGS...]${unknown.length ? ` (unknown: ${unknown.join(' ')})` : ''}`);
    return supervise(program, { notify: flags.includes('--notify') });
  }
  const { values } = parseArgs({
    args: rest,
    options: {
      socket: { type: 'string' },
      'pid-file': { type: 'string' },
      signal: { type: 'string' },
      timeout: { type: 'string' },
      'server-uid': { type: 'string', multiple: true },
      env: { type: 'string', multiple: true },
      'env-file': { type: 'string' },
      wait: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    usage(process.stdout, USAGE);
    return 0;
  }
  const timeout = values.timeout === undefined ? 120_000 : Number(values.timeout);
  if (!Number.isInteger(timeout) || timeout <= 0) throw new UsageError(`--timeout must be a positive number of milliseconds, got ${values.timeout}`);
  if ((values.socket === undefined) === (values['pid-file'] === undefined)) throw new UsageError('give either --socket PATH or --pid-file FILE');
  if (values.signal !== undefined && values['pid-file'] === undefined) throw new UsageError('--signal goes with --pid-file');
  if (values['server-uid'] !== undefined && values.socket === undefined) throw new UsageError('--server-uid goes with --socket');
  const serverUids = (values['server-uid'] ?? []).map((uid) => {
    if (!/^\d{1,10}$/.test(uid) || Number(uid) > 0xfffffffe) throw new UsageError(`--server-uid must be a numeric uid, got ${uid}`);
    return Number(uid);
  });
  if ((values.env !== undefined || values['env-file'] !== undefined) && (command !== 'upgrade' || values.socket === undefined)) throw new UsageError('--env and --env-file go with upgrade --socket');
  const env = environmentChanges(values.env ?? [], values['env-file']);
  const signalName = values.signal ?? (command === 'upgrade' ? 'SIGHUP' : 'SIGTERM');
  if (values['pid-file'] !== undefined && !Object.hasOwn(constants.signals, signalName)) throw new UsageError(`unknown signal ${signalName}`);

  switch (command) {
    case 'upgrade':
      return values.socket ? upgradeBySocket(values.socket, timeout, { serverUids }, env) : upgradeByPidFile(values['pid-file']!, signalName, timeout);
    case 'rollback':
      if (!values.socket) throw new UsageError('rollback needs --socket PATH');
      return rollbackBySocket(values.socket, timeout, { serverUids });
    case 'stop':
      return values.socket ? stopBySocket(values.socket, values.wait, timeout, { serverUids }) : stopByPidFile(values['pid-file']!, signalName, values.wait, timeout);
    case 'status':
      if (!values.socket) throw new UsageError('status needs --socket PATH');
      return status(values.socket, values.json, timeout, { serverUids });
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

/** How often an upgrade refused because the previous generation still drains is asked again. */
const PARENT_ALIVE_RETRY_MS = 100;
/** How often the socket is asked who serves it, after the server left without answering an upgrade. */
const CONFIRM_RETRY_MS = 50;

const isPid = (value: unknown): value is number => Number.isInteger(value) && (value as number) > 0;

/**
 * Upgrade through the control socket. On the same connection, `status` first:
 * its pid is the process that then handles the upgrade (SO_PEERCRED cannot
 * tell: it names whoever called listen(), generation 0, for ever).
 */
async function upgradeBySocket(socket: string, timeout: number, options: ConnectOptions, env: string[] = []): Promise<number> {
  // A deploy right after another: the generation serving now refuses while its
  // parent drains (maxDrainingGenerations 1): ask again until it is gone, within --timeout.
  const deadline = Date.now() + timeout;
  const remaining = () => Math.max(1, deadline - Date.now());
  let waited = false;
  for (;;) {
    const connection = ControlConnection.open(socket, options);
    let before: ControlReply;
    let reply: ControlReply;
    try {
      before = await connection.ask('status', remaining());
      // Refused at once (another uid, one connection too many): the upgrade would be too.
      if (!before.ok) {
        err(`upgrade failed: ${before.code}: ${before.message}`);
        return 1;
      }
      // The next generation's environment: `env` lines, for this connection's upgrade only.
      for (const line of env) {
        const set = await connection.ask(line as `env ${string}`, remaining());
        if (!set.ok) {
          err(`upgrade failed: ${set.code}: ${set.message}`);
          return 1;
        }
      }
      try {
        reply = await connection.ask('upgrade', remaining());
      } catch (e) {
        if (e instanceof NoAnswerError && isPid(before.pid)) return confirmUpgrade(socket, before, deadline, options);
        throw e;
      }
    } finally {
      connection.close();
    }
    if (!reply.ok && reply.code === 'ERR_ECDYSIS_PARENT_ALIVE' && Date.now() + PARENT_ALIVE_RETRY_MS < deadline) {
      if (!waited) err(`waiting: ${reply.message}`);
      waited = true;
      await delay(PARENT_ALIVE_RETRY_MS);
      continue;
    }
    if (!reply.ok) {
      err(`upgrade failed: ${reply.code}: ${reply.message}`);
      return 1;
    }
    out(`upgraded: pid ${reply.pid} (generation ${reply.generation}) in ${reply.elapsedMs} ms`);
    return 0;
  }
}

/**
 * The server closed the connection after `upgrade` without an answer: an old
 * generation that exits at once after its drain can, although its upgrade
 * succeeded. Ask whoever serves the socket now (the next generation serves it
 * once it is ready; until then a connection waits, or is refused): a later
 * generation in another process is the upgrade done.
 */
async function confirmUpgrade(socket: string, before: Extract<ControlReply, { ok: true }>, deadline: number, options: ConnectOptions): Promise<number> {
  const old = `pid ${before.pid} (generation ${before.generation})`;
  let lastProblem = 'nothing answered';
  while (Date.now() < deadline) {
    let now: ControlReply;
    try {
      now = (await request(socket, 'status', Math.max(1, deadline - Date.now()), options)).reply;
    } catch (e) {
      if (e instanceof UntrustedServerError || !(e instanceof ConnectionError)) throw e;
      lastProblem = e.message;
      await delay(CONFIRM_RETRY_MS);
      continue;
    }
    if (!now.ok) {
      lastProblem = `status failed: ${now.code}: ${now.message}`;
    } else if (isPid(now.pid) && now.pid !== before.pid && Number(now.generation) > Number(before.generation)) {
      err(`${old} closed the connection without answering the upgrade; ${socket} is served by its successor now`);
      out(`upgraded: pid ${now.pid} (generation ${now.generation})`);
      return 0;
    } else if (now.pid === before.pid && now.state === 'ready' && now.upgrade === null) {
      err(`upgrade failed: ${old} closed the connection without an answer and still serves (${now.state}): the upgrade did not take effect`);
      return 1;
    } else if (now.pid !== before.pid) {
      err(`upgrade unknown: ${old} closed the connection without an answer, and ${socket} is now served by pid ${now.pid} (generation ${now.generation}), not a later generation`);
      return 1;
    }
    // Still the same process, upgrading (or between states): ask again.
    await delay(CONFIRM_RETRY_MS);
  }
  throw new ConnectionError(`${old} closed the connection without answering the upgrade, and whether it happened is unknown: no later generation answered status at ${socket} in time (${lastProblem})`);
}

async function rollbackBySocket(socket: string, timeout: number, options: ConnectOptions): Promise<number> {
  const { reply } = await request(socket, 'rollback', timeout, options);
  if (!reply.ok) {
    err(`rollback failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  out(`rolled back: pid ${reply.pid} (generation ${reply.generation}) serves`);
  return 0;
}

async function stopBySocket(socket: string, wait: boolean, timeout: number, options: ConnectOptions): Promise<number> {
  const { reply, closed } = await request(socket, 'stop', timeout, { awaitClose: wait, ...options });
  if (!reply.ok) {
    err(`stop failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  if (wait) {
    // The server holds the connection until its process exits.
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([closed.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeout)))]);
    clearTimeout(timer);
    if (!gone || (isPid(reply.pid) && !(await exited(() => !alive(reply.pid as number), timeout)))) {
      err(`pid ${reply.pid} was still running after ${timeout} ms`);
      return 1;
    }
  }
  out(`stopped: pid ${reply.pid}${wait ? ' has exited' : ' is stopping'}`);
  return 0;
}

async function status(socket: string, json: boolean, timeout: number, options: ConnectOptions): Promise<number> {
  const { reply } = await request(socket, 'status', timeout, options);
  if (!reply.ok) {
    err(`status failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  if (json) {
    process.stdout.write(`${printableJson(reply)}\n`);
    return 0;
  }
  const upgrade = reply.upgrade as { childPid: number | null } | null;
  const parent = reply.parent as { pid: number; state: string } | null | undefined;
  const previous = !reply.parentAlive
    ? ''
    : parent?.state === 'drained'
      ? `, previous generation (pid ${parent.pid}) drained but still running (lingering: its application keeps it alive)`
      : `, previous generation${parent ? ` (pid ${parent.pid})` : ''} still draining`;
  const local = reply.local === true ? ', local mode (no upgrades: they need Linux)' : '';
  out(`pid ${reply.pid}, generation ${reply.generation}, ${reply.state}${previous}${upgrade ? `, upgrading (child pid ${upgrade.childPid})` : ''}${local}`);
  const listeners = Array.isArray(reply.listeners) ? (reply.listeners as { key: string; kind: string; address: string; connections: number }[]) : [];
  const workers = Array.isArray(reply.workers) ? (reply.workers as { index: number; pid: number | null; generation: number; state: string; connections: number; restarts: number }[]) : undefined;
  for (const l of listeners) {
    // A primary accepts nothing itself: the connections are its workers'.
    const connections = workers ? '' : `  ${l.connections} connection${l.connections === 1 ? '' : 's'}`;
    out(`  ${printable(l.kind).padEnd(15)} ${l.address}${connections}  (${printable(l.key)})`);
  }
  if (workers) {
    out(`  primary pid ${reply.pid}, ${workers.length} worker${workers.length === 1 ? '' : 's'}:`);
    for (const w of workers) {
      const restarts = w.restarts > 0 ? `, replaced ${w.restarts} time${w.restarts === 1 ? '' : 's'}` : '';
      out(`  worker ${w.index}  pid ${w.pid ?? '-'}  generation ${w.generation}  ${printable(String(w.state))}  ${w.connections} connection${w.connections === 1 ? '' : 's'}${restarts}`);
    }
  }
  return 0;
}

/** Open, check and hold the process `file` names (pid-file.ts); the caller closes it. */
function targetOf(file: string): Target {
  const pidFile = readPidFile(file);
  // Held first, checked second: a pid reused meanwhile gets no signal (the pidfd's process is gone).
  const target = new Target(pidFile.pid);
  const problem = targetProblem(file, pidFile);
  if (problem) {
    target.close();
    throw new PidFileError(`not signalling: ${problem}`);
  }
  return target;
}

async function upgradeByPidFile(file: string, signalName: string, timeout: number): Promise<number> {
  const target = targetOf(file);
  try {
    target.signal(signalName);
  } finally {
    target.close();
  }
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    await delay(50);
    let next: ReturnType<typeof readPidFile>;
    try {
      next = readPidFile(file);
    } catch {
      continue; // being rewritten
    }
    if (next.pid !== target.pid && alive(next.pid) && targetProblem(file, next) === undefined) {
      out(`upgraded: pid ${next.pid} (from the PID file)`);
      return 0;
    }
  }
  err(`no new pid in ${file} within ${timeout} ms; a signal cannot say why: see the service's events or logs (a control socket can)`);
  return 1;
}

async function stopByPidFile(file: string, signalName: string, wait: boolean, timeout: number): Promise<number> {
  const target = targetOf(file);
  try {
    target.signal(signalName);
    if (wait && !(await exited(() => target.exited(), timeout))) {
      err(`pid ${target.pid} was still running after ${timeout} ms`);
      return 1;
    }
  } finally {
    target.close();
  }
  out(`stopped: pid ${target.pid}${wait ? ' has exited' : ' is stopping'}`);
  return 0;
}

async function exited(gone: () => boolean, timeout: number): Promise<boolean> {
  const deadline = Date.now() + timeout;
  while (!gone()) {
    if (Date.now() > deadline) return false;
    await delay(20);
  }
  return true;
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error) => {
    if (e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      err(e.message);
      usage(process.stderr, `\n${USAGE}`);
    } else if (e instanceof ConnectionError || e instanceof PidFileError) err(e.message);
    else if (e instanceof EnvChangeError) err(`upgrade refused: ${e.code}: ${e.message}`);
    else err(`ecdysis: ${e.message}`);
    process.exitCode = 2;
  },
);
