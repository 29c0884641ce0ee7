/**
 * `ecdysis run -- COMMAND`: a small supervisor, for containers (where the first
 * generation would be PID 1, and the container would end with it) and plain
 * shells. It stays the same process throughout, like systemd for a unit:
 * - it gives the service a notify socket (NOTIFY_SOCKET) and follows MAINPID=
 *   hand-overs, so it always knows which process is the service. As systemd
 *   with NotifyAccess=main, it hears only the main process (by the sender's
 *   SO_PASSCRED credentials): any other process of the service could otherwise
 *   make itself main and take the signals meant for the service;
 * - it forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to that process,
 *   which runs in a session of its own so that it has each signal once, from us;
 * - it reaps every orphan at once (it is PID 1, or a child subreaper);
 * - it exits with the service's status once the service is gone for good.
 * Under a process manager (pm2 fork mode, supervisord, runit, s6) it is the
 * stable child the manager watches. pm2 gives it an IPC channel: it says
 * 'ready' there once the service is (pm2's wait_ready), takes a 'shutdown'
 * message there for a SIGTERM (pm2's shutdown_with_message), and lets go of
 * the channel when it is done, which would otherwise keep it alive.
 * With --notify it relays readiness (READY=1, RELOADING=1, STOPPING=1, STATUS=,
 * WATCHDOG=1, EXTEND_TIMEOUT_USEC=) to its own service manager, as the stable
 * main process: systemd then never has to follow a hand-over. Its watchdog
 * (WATCHDOG_USEC for this pid) becomes the service's: the main generation
 * pings, and the pings are relayed.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { native, type PacketSocket } from '../internal/native.ts';
import { alive, readdirSafe, stat } from './proc.ts';
import { ServiceManager, watchdogUsec } from '../systemd/notify.ts';
import { RUN_ENV } from '../internal/process-managers.ts';

const FORWARDED: NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
/** The signals systemd may send as KillSignal= (a stop). */
const STOP_SIGNALS = new Set<NodeJS.Signals>(['SIGTERM', 'SIGINT', 'SIGQUIT']);
/** How long a stop signal is held back, under systemd, for the service to say it had it already. */
const STOP_ECHO_WAIT_MS = 1_000;
/** Fields worth relaying to our own service manager (never MAINPID: this process stays main). */
const RELAYED = ['READY', 'RELOADING', 'STOPPING', 'STATUS', 'WATCHDOG', 'EXTEND_TIMEOUT_USEC', 'MONOTONIC_USEC', 'ERRNO'];
/** How often the main process and orphans are checked besides SIGCHLD. */
const CHECK_EVERY_MS = 100;

interface Exit {
  exitCode: number | null;
  signal: string | number | null;
}

export function supervise(command: string[], options: { notify: boolean }): Promise<number> {
  if (process.pid !== 1) native().setChildSubreaper(true);
  const dir = mkdtempSync(join(tmpdir(), 'ecdysis-run-'));
  const notifyPath = join(dir, 'notify.sock');
  const env = serviceEnvironment(process.env, notifyPath);
  const upstream = options.notify ? ServiceManager.fromEnvironment('auto', process.env, (e) => process.stderr.write(`ecdysis run: cannot notify: ${e.message}\n`)) : undefined;

  return new Promise<number>((resolve) => {
    const exits = new Map<number, Exit>();
    /** The service's main process; 0 until the command has a pid (never signalled as such: kill(0) is our group). */
    let main = 0;
    let mainExit: Exit | undefined;
    /** Processes that were main and handed over (MAINPID=): one may take the service back if its successor dies. */
    const formerMains = new Set<number>();
    /** The main process said STOPPING=1: its end is a stop, even if its status is not ours to read. */
    let stopping = false;
    /**
     * Under systemd, KillMode=control-group (its default) sends the stop signal
     * to every process of the unit, the service too, and KillMode=mixed or
     * process to us alone. Forwarded as well, the service's second stop signal
     * would end its drain at once, with the requests in flight. So the first
     * stop signal is held back until the service says STOPPING=1 (it had it
     * from systemd: not sent) or for STOP_ECHO_WAIT_MS (it did not: sent).
     * Every later one is sent at once (an escalation).
     */
    const signalsWholeUnit = process.env.INVOCATION_ID !== undefined;
    /** The main process whose first stop signal is settled (held back for good, or sent). */
    let stopSettled = 0;
    let pendingStop: NodeJS.Timeout | undefined;
    let finished = false;
    let warnedOfOthers = false;
    let saidReady = false;

    const reader: PacketSocket = new (native().PacketSocket)(native().bindUnixDatagram(notifyPath, { passCredentials: true }), 'datagram', {
      onMessage: (data, _address, _port, _fds, sender) => onNotification(data.toString(), sender?.pid),
      onError: () => {},
    });
    reader.startReading();

    // A session of its own (setsid): a signal to our process group (supervisord's stopasgroup, a
    // terminal's Ctrl-C) reaches the service once, forwarded by us; twice, the second would be
    // a further stop, which ends its drain at once, with the requests in flight.
    const child = spawn(command[0]!, command.slice(1), { stdio: 'inherit', env, detached: true });
    child.on('error', (e) => {
      process.stderr.write(`ecdysis run: cannot start ${command[0]}: ${e.message}\n`);
      finish(127);
    });
    // Node reaps the process it spawned itself: reapChildren leaves it to Node.
    child.on('exit', (exitCode, signal) => record(child.pid!, { exitCode, signal }));
    main = child.pid ?? 0;

    const send = (signal: NodeJS.Signals) => {
      // Never kill(0) or kill(-1): our own process group, or every process we may signal.
      if (main <= 0) return;
      try {
        process.kill(main, signal);
      } catch {
        // gone already: its exit is being handled
      }
    };
    const forward = (signal: NodeJS.Signals) => () => {
      if (!STOP_SIGNALS.has(signal) || !signalsWholeUnit || stopSettled === main) return send(signal);
      // The first stop signal for this main process, under systemd: it may have had it already.
      if (stopping) return void (stopSettled = main);
      if (pendingStop) {
        // A second one while we wait: the service is asked again (an escalation), now.
        clearTimeout(pendingStop);
        pendingStop = undefined;
        stopSettled = main;
        return send(signal);
      }
      pendingStop = setTimeout(() => {
        pendingStop = undefined;
        stopSettled = main;
        send(signal);
      }, STOP_ECHO_WAIT_MS);
    };
    // A signal our manager sends to every process of the service itself is not sent a second time: that would be a second stop.
    const sentToAll = signalledByManager(process.env);
    const handlers = FORWARDED.map((signal) => [signal, sentToAll.has(signal) ? () => {} : forward(signal)] as const);
    for (const [signal, handler] of handlers) process.on(signal, handler);
    // pm2 with shutdown_with_message (or PM2_KILL_USE_MESSAGE) stops an app with a 'shutdown'
    // message on its IPC channel and sends no signal: the service is stopped as by a SIGTERM.
    const onMessage = (message: unknown) => {
      if (message === 'shutdown') forward('SIGTERM')();
    };
    if (process.connected) process.on('message', onMessage);
    const onChild = () => reap();
    process.on('SIGCHLD', onChild);
    const timer = setInterval(check, CHECK_EVERY_MS);

    /**
     * NotifyAccess=main: only the main process speaks for the service (it hands
     * over with MAINPID=<successor>). The one other voice is a take-back: a
     * former main whose successor has died names itself again.
     */
    function onNotification(message: string, sender: number | undefined): void {
      const fields = new Map<string, string>();
      for (const line of message.split('\n')) {
        const at = line.indexOf('=');
        if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1));
      }
      const next = Number(fields.get('MAINPID'));
      const fromMain = sender !== undefined && sender === main;
      const takeBack = sender !== undefined && formerMains.has(sender) && next === sender && !alive(main);
      if (!fromMain && !takeBack) {
        if (!warnedOfOthers) {
          warnedOfOthers = true;
          process.stderr.write(`ecdysis run: ignored a notification from pid ${sender ?? '?'}: only the main process (pid ${main}) is heard, as under NotifyAccess=main (a command that starts the service must exec it); warned once\n`);
        }
        return;
      }
      // Only a process of this service may become its main process.
      if (Number.isInteger(next) && next > 0 && next !== main && descends(next)) {
        if (fromMain && main > 0) formerMains.add(main);
        formerMains.delete(next);
        main = next;
        mainExit = undefined;
        stopping = false;
      }
      if (fields.get('STOPPING') === '1') {
        stopping = true;
        // The stop signal we hold back reached the service from systemd itself.
        if (pendingStop) {
          clearTimeout(pendingStop);
          pendingStop = undefined;
          stopSettled = main;
        }
      }
      // pm2's wait_ready: the manager that gave us an IPC channel hears when the service is ready (once).
      if (fields.get('READY') === '1' && !saidReady && process.connected) {
        saidReady = true;
        // With a callback, a channel that breaks meanwhile is an error passed to it, not an 'error' event that would end this process.
        process.send?.('ready', undefined, undefined, () => {});
      }
      if (upstream) {
        const relayed = Object.fromEntries([...fields].filter(([key]) => RELAYED.includes(key)));
        if (Object.keys(relayed).length > 0) upstream.notify(relayed);
      }
    }

    function record(pid: number, exit: Exit): void {
      exits.set(pid, exit);
      if (pid === main) mainExit = exit;
      check();
    }

    function reap(): void {
      for (const { pid, exitCode, signal } of native().reapChildren(child.pid === undefined ? [] : [child.pid])) record(pid, { exitCode, signal });
    }

    /**
     * The service is gone when its main process is, and no other process of it
     * is left that could take it back (an old generation sends MAINPID= when it
     * does). Notifications already queued are read first: a MAINPID= sent just
     * before the old main exited must win over its exit.
     */
    function check(): void {
      if (finished) return;
      reap();
      // A former main that is gone can take nothing back (and its pid may be reused).
      for (const pid of formerMains) if (!alive(pid)) formerMains.delete(pid);
      // Reaping records exits, and a recorded exit runs this check again: it may have finished.
      if (finished || alive(main)) return;
      // A zombie not reaped yet: its status comes with the next SIGCHLD (ours to
      // reap), or it vanishes (its own parent's).
      if (mainExit === undefined && !exits.has(main) && stat(main) !== undefined) return;
      if (native().pendingBytes(reader.fd) > 0) return;
      if (descendants().length > 0) return;
      // A main process that was not our child was reaped by its own parent: its
      // status is not ours to read; a stop it announced counts as success.
      const exit = mainExit ?? exits.get(main);
      finish(exit ? statusOf(exit) : stopping ? 0 : 1);
    }

    function finish(code: number): void {
      if (finished) return;
      finished = true;
      clearInterval(timer);
      clearTimeout(pendingStop);
      for (const [signal, handler] of handlers) process.off(signal, handler);
      process.off('message', onMessage);
      process.off('SIGCHLD', onChild);
      reader.close();
      rmSync(dir, { recursive: true, force: true });
      // A manager's IPC channel (pm2 fork mode, whose container listens on it) would keep this process alive with nothing left to supervise.
      if (process.connected) process.disconnect();
      resolve(code);
    }
  });
}

/**
 * The service's environment: ours, with our own notify socket in place of our
 * service manager's (read before ServiceManager takes the variables out of
 * ours). Never WATCHDOG_PID: it names this process, and would tell the service
 * that the watchdog is not its own; when the watchdog is ours (WATCHDOG_USEC for
 * this pid), the service's main generation pings it, and --notify relays.
 */
function serviceEnvironment(own: NodeJS.ProcessEnv, notifyPath: string): NodeJS.ProcessEnv {
  const { NOTIFY_SOCKET: _manager, WATCHDOG_PID: _main, WATCHDOG_USEC: usec, ...env } = own;
  return { ...env, NOTIFY_SOCKET: notifyPath, [RUN_ENV]: String(process.pid), ...(usec !== undefined && watchdogUsec(own) !== undefined ? { WATCHDOG_USEC: usec } : {}) };
}

/**
 * Signals this process's manager sends to every process of the service, not
 * only to us: pm2 with treekill (its default) sends its kill signal (SIGINT,
 * or PM2_KILL_SIGNAL) to each descendant of its child, deepest first. The
 * service has had it by the time we do; forwarded, it would be the service's
 * second stop signal, which ends its drain at once (the requests in flight
 * with it). Every other signal is forwarded, under pm2 too.
 */
export function signalledByManager(env: NodeJS.ProcessEnv): Set<string> {
  if (env.pm_id === undefined || env.treekill !== 'true') return new Set();
  return new Set([env.PM2_KILL_SIGNAL || 'SIGINT']);
}

/** The shell's convention: 128 + the signal's number for a process a signal ended. */
function statusOf(exit: Exit): number {
  if (exit.exitCode !== null) return exit.exitCode;
  if (typeof exit.signal === 'number') return 128 + exit.signal;
  return 128 + (exit.signal ? (constants.signals as Record<string, number>)[exit.signal] ?? 0 : 0);
}

/**
 * Living processes whose chain of parents leads to this one. A zombie is not
 * one of them, but it still links its children to this process: a generation
 * that has exited and is not reaped yet must not cut its successor off.
 */
function descendants(): number[] {
  const parents = new Map<number, number>();
  const living = new Set<number>();
  for (const entry of readdirSafe('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = stat(entry);
    if (!fields) continue;
    parents.set(Number(entry), Number(fields[1]));
    if (alive(entry)) living.add(Number(entry));
  }
  return [...living].filter((pid) => {
    for (let p = parents.get(pid), hops = 0; p !== undefined && hops < 64; p = parents.get(p), hops++) if (p === process.pid) return true;
    return false;
  });
}

function descends(pid: number): boolean {
  return descendants().includes(pid);
}

