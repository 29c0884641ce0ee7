#!/usr/bin/env node
/**
 * `ecdysis`: upgrade, stop or inspect a running service, or supervise it as PID 1.
 *
 *   ecdysis upgrade --socket PATH [--timeout MS]
 *   ecdysis upgrade --pid-file FILE [--signal SIGHUP] [--timeout MS]
 *   ecdysis stop    --socket PATH [--wait] [--timeout MS]
 *   ecdysis stop    --pid-file FILE [--signal SIGTERM] [--wait] [--timeout MS]
 *   ecdysis status  --socket PATH [--json]
 *   ecdysis run [--notify] -- COMMAND [ARGS...]
 *
 * Exit status: 0 done; 1 the operation failed (the error code is printed);
 * 2 a usage error, or the service could not be reached.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConnectionError, request } from './client.ts';
import { alive } from './proc.ts';
import { supervise } from './run.ts';

const USAGE = `usage:
  ecdysis upgrade --socket PATH [--timeout MS]        upgrade (once the previous generation has drained, if it must);
                                                      prints the new pid (exit 0) or the error code (exit 1)
  ecdysis upgrade --pid-file FILE [--signal SIGHUP] [--timeout MS]
                                                      signal, then wait for the PID file to name a new process;
                                                      a signal cannot report a failure: only the timeout tells
  ecdysis stop --socket PATH [--wait] [--timeout MS]  stop gracefully; --wait returns once the process is gone
  ecdysis stop --pid-file FILE [--signal SIGTERM] [--wait] [--timeout MS]
  ecdysis status --socket PATH [--json]               pid, generation, state, listeners
  ecdysis run [--notify] -- COMMAND [ARGS...]         run COMMAND as a supervised service (PID 1 in a container):
                                                      follows MAINPID= hand-overs, forwards signals, reaps orphans,
                                                      exits with the service's status; --notify relays readiness
                                                      to the service manager of ecdysis run itself (systemd)
exit status: 0 done, 1 the operation failed, 2 usage or connection error`;

class UsageError extends Error {}

const out = (line: string) => process.stdout.write(`${line}\n`);
const err = (line: string) => process.stderr.write(`${line}\n`);

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    out(USAGE);
    return command === undefined ? 2 : 0;
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
      wait: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    out(USAGE);
    return 0;
  }
  const timeout = values.timeout === undefined ? 120_000 : Number(values.timeout);
  if (!Number.isInteger(timeout) || timeout <= 0) throw new UsageError(`--timeout must be a positive number of milliseconds, got ${values.timeout}`);
  if ((values.socket === undefined) === (values['pid-file'] === undefined)) throw new UsageError('give either --socket PATH or --pid-file FILE');
  if (values.signal !== undefined && values['pid-file'] === undefined) throw new UsageError('--signal goes with --pid-file');

  switch (command) {
    case 'upgrade':
      return values.socket ? upgradeBySocket(values.socket, timeout) : upgradeByPidFile(values['pid-file']!, values.signal ?? 'SIGHUP', timeout);
    case 'stop':
      return values.socket ? stopBySocket(values.socket, values.wait, timeout) : stopByPidFile(values['pid-file']!, values.signal ?? 'SIGTERM', values.wait, timeout);
    case 'status':
      if (!values.socket) throw new UsageError('status needs --socket PATH');
      return status(values.socket, values.json, timeout);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

/** How often an upgrade refused because the previous generation still drains is asked again. */
const PARENT_ALIVE_RETRY_MS = 100;

async function upgradeBySocket(socket: string, timeout: number): Promise<number> {
  // A deploy right after another: the generation serving now refuses while its
  // parent drains (maxDrainingGenerations 1): ask again until it is gone, within --timeout.
  const deadline = Date.now() + timeout;
  let reply = (await request(socket, 'upgrade', timeout)).reply;
  let waited = false;
  while (!reply.ok && reply.code === 'ERR_ECDYSIS_PARENT_ALIVE' && Date.now() + PARENT_ALIVE_RETRY_MS < deadline) {
    if (!waited) err(`waiting: ${reply.message}`);
    waited = true;
    await new Promise((resolve) => setTimeout(resolve, PARENT_ALIVE_RETRY_MS));
    reply = (await request(socket, 'upgrade', Math.max(1, deadline - Date.now()))).reply;
  }
  if (!reply.ok) {
    err(`upgrade failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  out(`upgraded: pid ${reply.pid} (generation ${reply.generation}) in ${reply.elapsedMs} ms`);
  return 0;
}

async function stopBySocket(socket: string, wait: boolean, timeout: number): Promise<number> {
  const { reply, closed } = await request(socket, 'stop', timeout, { awaitClose: wait });
  if (!reply.ok) {
    err(`stop failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  if (wait) {
    // The server holds the connection until its process exits.
    let timer: NodeJS.Timeout | undefined;
    const gone = await Promise.race([closed.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeout)))]);
    clearTimeout(timer);
    if (!gone || !(await exited(reply.pid as number, timeout))) {
      err(`pid ${reply.pid} was still running after ${timeout} ms`);
      return 1;
    }
  }
  out(`stopped: pid ${reply.pid}${wait ? ' has exited' : ' is stopping'}`);
  return 0;
}

async function status(socket: string, json: boolean, timeout: number): Promise<number> {
  const { reply } = await request(socket, 'status', timeout);
  if (!reply.ok) {
    err(`status failed: ${reply.code}: ${reply.message}`);
    return 1;
  }
  if (json) {
    out(JSON.stringify(reply));
    return 0;
  }
  const upgrade = reply.upgrade as { childPid: number | null } | null;
  out(`pid ${reply.pid}, generation ${reply.generation}, ${reply.state}${reply.parentAlive ? ', previous generation still draining' : ''}${upgrade ? `, upgrading (child pid ${upgrade.childPid})` : ''}`);
  for (const l of reply.listeners as { key: string; kind: string; address: string; connections: number }[]) {
    out(`  ${l.kind.padEnd(15)} ${l.address}  ${l.connections} connection${l.connections === 1 ? '' : 's'}  (${l.key})`);
  }
  return 0;
}

function readPid(file: string): number {
  const text = readFileSync(file, 'utf8').trim();
  if (!/^\d+$/.test(text)) throw new ConnectionError(`${file} does not hold a pid`);
  return Number(text);
}

function signal(pid: number, name: string): void {
  try {
    process.kill(pid, name);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ERR_UNKNOWN_SIGNAL') throw new UsageError(`unknown signal ${name}`);
    throw new ConnectionError(`cannot signal pid ${pid}: ${code}`);
  }
}

async function upgradeByPidFile(file: string, signalName: string, timeout: number): Promise<number> {
  const old = readPid(file);
  signal(old, signalName);
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    await delay(50);
    let pid: number;
    try {
      pid = readPid(file);
    } catch {
      continue; // being rewritten
    }
    if (pid !== old && alive(pid)) {
      out(`upgraded: pid ${pid} (from the PID file)`);
      return 0;
    }
  }
  err(`no new pid in ${file} within ${timeout} ms; a signal cannot say why: see the service's events or logs (a control socket can)`);
  return 1;
}

async function stopByPidFile(file: string, signalName: string, wait: boolean, timeout: number): Promise<number> {
  const pid = readPid(file);
  signal(pid, signalName);
  if (wait && !(await exited(pid, timeout))) {
    err(`pid ${pid} was still running after ${timeout} ms`);
    return 1;
  }
  out(`stopped: pid ${pid}${wait ? ' has exited' : ' is stopping'}`);
  return 0;
}

async function exited(pid: number, timeout: number): Promise<boolean> {
  const deadline = Date.now() + timeout;
  while (alive(pid)) {
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
    if (e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) err(`${e.message}\n\n${USAGE}`);
    else if (e instanceof ConnectionError) err(e.message);
    else err(`ecdysis: ${e.message}`);
    process.exitCode = 2;
  },
);
