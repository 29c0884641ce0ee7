/**
 * The control socket's line protocol, version 1: the whole of it, shared by the
 * library (the server) and the `ecdysis` CLI (a client).
 *
 * A client connects to the Unix stream socket and writes one command per line:
 *
 *     upgrade | stop | partial-stop | status
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
 * - `stop` and `partial-stop` answer as the stop begins (`pid`, `mode`); the
 *   server keeps the connection open until its process exits, so a client that
 *   waits for EOF knows when the service is gone.
 * - `status`: `pid`, `generation`, `state`, `parentAlive`, `upgrade` (the
 *   starting generation's `childPid`, or null), `listeners` (`key`, `kind`,
 *   `address`, `connections`).
 * A socket takes only the commands its trigger lists give it (`status` always).
 * Errors: ERR_ECDYSIS_CONTROL (a line longer than MAX_LINE_BYTES, an unknown or
 * disallowed command, too many connections), ERR_ECDYSIS_CONTROL_DENIED (the
 * peer's uid is neither root, nor this process's, nor allowed). A connection
 * idle for IDLE_TIMEOUT_MS between commands is closed.
 */

export const CONTROL_PROTOCOL_VERSION = 1;
export const MAX_LINE_BYTES = 4096;
export const IDLE_TIMEOUT_MS = 10_000;
/** Connections served at once; more get an error line and are closed. */
export const MAX_CONNECTIONS = 64;

export const CONTROL_COMMANDS = ['upgrade', 'stop', 'partial-stop', 'status'] as const;
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
