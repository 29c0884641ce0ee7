/**
 * The one table of ecdysis errors. Every error the library raises on purpose
 * carries a stable `code` from this table; branch on `err.code`, never on the
 * message. System errors (EADDRINUSE, EBADF...) keep Node's own shape instead.
 */

export const ErrorCodes = {
  ERR_ECDYSIS_NOT_READY: 'this generation has not called ready() yet',
  ERR_ECDYSIS_UPGRADE_IN_PROGRESS: 'an upgrade is already in progress',
  ERR_ECDYSIS_PARENT_ALIVE: 'the previous generation has not exited yet',
  ERR_ECDYSIS_STOPPING: 'this generation is shutting down',
  ERR_ECDYSIS_CHILD_EXITED: 'the new generation exited before it was ready',
  ERR_ECDYSIS_CHILD_TIMEOUT: 'the new generation was not ready in time and was killed',
  ERR_ECDYSIS_CHILD_ERROR: 'the new generation reported an error while starting',
  ERR_ECDYSIS_SPAWN_FAILED: 'the new generation could not be started',
  ERR_ECDYSIS_BAD_ENVIRONMENT: 'the hand-over environment from the previous generation is unusable',
  ERR_ECDYSIS_PROTOCOL_VERSION: 'the two generations speak incompatible protocol versions',
  ERR_ECDYSIS_PROTOCOL: 'a malformed message crossed the control channel',
  ERR_ECDYSIS_INVALID_OPTION: 'an option is invalid',
  ERR_ECDYSIS_UNSUPPORTED: 'this environment cannot hand sockets over, or lacks this kind of socket',
  ERR_ECDYSIS_UPGRADE_UNSUPPORTED: 'upgrades need Linux: this process runs in local mode (macOS, Windows, or ECDYSIS_LOCAL=1)',
  ERR_ECDYSIS_LISTENER_CONFLICT: 'a listener with that key already exists in this generation',
  ERR_ECDYSIS_COMMIT_TIMEOUT: 'the previous generation neither committed the hand-over nor exited in time',
  ERR_ECDYSIS_SUCCESSOR_FAILED: 'the new generation died after it took over; this generation serves again',
  ERR_ECDYSIS_ROLLBACK_UNAVAILABLE: 'no previous generation can take the service back: it has exited, is done, or speaks an older protocol',
  ERR_ECDYSIS_PID_FILE: 'the PID file could not be written',
  ERR_ECDYSIS_SYSTEMD: 'what systemd passed (LISTEN_FDS, LISTEN_FDNAMES) is unusable, or a socket asked for is not among it',
  ERR_ECDYSIS_CONTROL: 'a control socket request was malformed, unknown, not allowed on that socket, or one too many',
  ERR_ECDYSIS_CONTROL_DENIED: 'the control socket peer is not allowed (SO_PEERCRED uid)',
  ERR_ECDYSIS_HANDOFF: 'the hand-over of state, files or connections failed; the old generation keeps them',
  ERR_ECDYSIS_NO_ADDRESS: 'the datagram came from an unbound Unix socket: there is no address to reply to',
  ERR_ECDYSIS_REPLY_REFUSED: "the sender's address is not a socket file the sender owns (or its credentials are unknown): no reply is sent there",
  ERR_ECDYSIS_SERVED: 'listen() was called on a server an ecdysis listener serves',
  ERR_ECDYSIS_WORKER_FAILED: 'a worker of the new group failed before the group was ready; the group was not started',
  ERR_ECDYSIS_WORKER_CRASH_LOOP: 'workers keep ending; they are replaced with a backoff and the others serve',
  ERR_ECDYSIS_WORKER: 'not allowed in a worker: upgrades, control sockets and new sockets are the primary\'s',
} as const;

export type ErrorCode = keyof typeof ErrorCodes;

/** Extra fields some errors carry. */
export interface EcdysisErrorDetails {
  cause?: unknown;
  /** Child exit code, for ERR_ECDYSIS_CHILD_EXITED and ERR_ECDYSIS_SUCCESSOR_FAILED. */
  exitCode?: number | null;
  /** Child exit signal, for ERR_ECDYSIS_CHILD_EXITED, ERR_ECDYSIS_CHILD_TIMEOUT and ERR_ECDYSIS_SUCCESSOR_FAILED. */
  signal?: NodeJS.Signals | null;
  /** Pid of the generation concerned. */
  pid?: number;
  /** The option at fault, for ERR_ECDYSIS_INVALID_OPTION. */
  option?: string;
}

/**
 * An error raised by ecdysis. `code` is one of {@link ErrorCodes}.
 *
 * @example
 * try { await ecdysis.upgrade(); }
 * catch (err) { if (err.code === 'ERR_ECDYSIS_UPGRADE_IN_PROGRESS') retryLater(); }
 */
export class EcdysisError extends Error {
  override name = 'EcdysisError';
  readonly code: ErrorCode;
  readonly exitCode?: number | null;
  readonly signal?: NodeJS.Signals | null;
  readonly pid?: number;
  readonly option?: string;

  constructor(code: ErrorCode, message?: string, details: EcdysisErrorDetails = {}) {
    super(message ?? ErrorCodes[code], details.cause === undefined ? undefined : { cause: details.cause });
    this.code = code;
    if ('exitCode' in details) this.exitCode = details.exitCode;
    if ('signal' in details) this.signal = details.signal;
    if (details.pid !== undefined) this.pid = details.pid;
    if (details.option !== undefined) this.option = details.option;
  }
}

/** Shorthand for an ERR_ECDYSIS_INVALID_OPTION naming the option. */
export function invalidOption(option: string, requirement: string, value: unknown): EcdysisError {
  let shown: string;
  try {
    shown = typeof value === 'string' ? JSON.stringify(value) : String(value);
  } catch {
    shown = typeof value;
  }
  return new EcdysisError('ERR_ECDYSIS_INVALID_OPTION', `"${option}" ${requirement}, got ${shown}`, { option });
}

/** True when `err` is an ecdysis error with the given code. */
export function isEcdysisError(err: unknown, code?: ErrorCode): err is EcdysisError {
  return err instanceof EcdysisError && (code === undefined || err.code === code);
}
