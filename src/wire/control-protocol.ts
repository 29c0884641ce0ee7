/**
 * The control socket's line protocol, version 1: the whole of it, shared by the
 * library (the server) and the `ecdysis` CLI (a client).
 *
 * A client connects to the Unix stream socket and writes one command per line:
 *
 *     upgrade | stop | partial-stop | status | rollback | env {"KEY":"value",...}
 *
 * The server answers each command with one line of JSON, in order:
 *
 *     {"ok":true,"protocol":1, ...}                                 the command's result
 *     {"ok":false,"protocol":1,"code":"ERR_ECDYSIS_...","message":...}
 *
 * - `upgrade` answers once the upgrade is committed, before the old generation
 *   starts exiting (so an application that exits right after its drain never
 *   loses the answer): `pid` (the new generation's),
 *   `generation`, `elapsedMs`; or the upgrade's error code (ERR_ECDYSIS_CHILD_EXITED,
 *   ERR_ECDYSIS_UPGRADE_IN_PROGRESS...). A client that disconnects meanwhile
 *   cancels nothing.
 * - `env {...}` (a JSON object of strings, or null to remove a variable) sets
 *   variables for this connection's next `upgrade` only: the new generation
 *   starts with them (and passes them on). Answered `{ ok, variables }` (their
 *   names only; the values are never logged nor echoed). Only root and the
 *   service's own uid may send it (a variable such as NODE_OPTIONS runs code as
 *   the service); at most MAX_ENV_VARIABLES variables and MAX_ENV_BYTES bytes
 *   per upgrade. A socket takes it when it takes `upgrade`.
 * - `rollback` (a socket that takes `upgrade` takes it too): the previous
 *   generation, while it still runs (draining, or in its probation), takes the
 *   service back as when its successor dies, and this one leaves it the sockets
 *   and drains; answered `pid` and `generation` of the one that serves again,
 *   or ERR_ECDYSIS_ROLLBACK_UNAVAILABLE (it has exited, or is done).
 * - `stop` and `partial-stop` answer as the stop begins (`pid`, `mode`); the
 *   server keeps the connection open until its process exits, so a client that
 *   waits for EOF knows when the service is gone.
 * - `status`: `pid`, `generation`, `state`, `parentAlive`, `parent` (`pid`,
 *   `state`: draining or drained), `upgrade` (the starting generation's
 *   `childPid`, or null), `listeners` (`key`, `kind`, `address`,
 *   `connections`), `metrics` (the counters that go on across generations).
 * A socket takes only the commands its trigger lists give it (`status` always).
 * Errors: ERR_ECDYSIS_CONTROL (a line longer than MAX_LINE_BYTES, an unknown or
 * disallowed command, more than MAX_QUEUED_COMMANDS commands sent ahead of their
 * answers, too many connections), ERR_ECDYSIS_CONTROL_DENIED (the peer's uid is
 * neither root, nor this process's, nor allowed, and its gid is not allowed).
 * After an error line about the connection itself (not a command) the server
 * closes it.
 *
 * Bounds, so that no client, allowed or not, can make the server hold more than
 * a few KiB for it or keep others out:
 * - commands run one at a time per connection; while one runs, or while more
 *   than MAX_UNREAD_BYTES of answers wait for the client to read them, the
 *   server reads nothing more from it (the client's writes block in the kernel);
 * - a connection is closed after IDLE_TIMEOUT_MS without a command running or
 *   arriving (empty lines and partial lines do not count);
 * - MAX_CONNECTIONS at once, at most MAX_CONNECTIONS_PER_UID of them by one uid,
 *   and the last ROOT_RESERVED_CONNECTIONS only for root.
 */

export const CONTROL_PROTOCOL_VERSION = 1;
export const MAX_LINE_BYTES = 4096;
export const IDLE_TIMEOUT_MS = 10_000;
/** Connections served at once; more get an error line and are closed. */
export const MAX_CONNECTIONS = 64;
/** Connections one uid may hold at once (a script that leaks them locks out only itself). */
export const MAX_CONNECTIONS_PER_UID = 8;
/** Of MAX_CONNECTIONS, the ones only root may take: an operator can always get in. */
export const ROOT_RESERVED_CONNECTIONS = 8;
/** Commands a client may send ahead of their answers; one more closes the connection. */
export const MAX_QUEUED_COMMANDS = 16;
/** Answers written but not yet read by the client beyond which the server stops reading it. */
export const MAX_UNREAD_BYTES = 16 * 1024;

export const CONTROL_COMMANDS = ['upgrade', 'stop', 'partial-stop', 'status', 'rollback'] as const;
/** Commands a socket takes when its trigger lists give it `upgrade` (and `env` lines before an upgrade). */
export const UPGRADE_COMMANDS: readonly string[] = ['upgrade', 'rollback'];
/** `env {"KEY":"value"|null,...}` lines before `upgrade`: at most this many variables, and bytes of names and values, per upgrade. */
export const MAX_ENV_VARIABLES = 256;
export const MAX_ENV_BYTES = 64 * 1024;
/** An environment variable's name, as the next generation's environment takes it. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,254}$/;
export type ControlCommand = (typeof CONTROL_COMMANDS)[number];

export type ControlReply =
  | ({ ok: true; protocol: number } & Record<string, unknown>)
  | { ok: false; protocol: number; code: string; message: string };

export function encodeReply(reply: Record<string, unknown>): string {
  return `${JSON.stringify({ ...reply, protocol: CONTROL_PROTOCOL_VERSION })}\n`;
}

export function errorReply(code: string, message: string): string {
  return encodeReply({ ok: false, code, message });
}
