/**
 * Local mode: how ecdysis runs where its addon cannot (macOS, Windows), and on
 * Linux when asked to (ECDYSIS_LOCAL=1), so that the code path a developer's
 * laptop takes can be run and tested on Linux too. In local mode the addon is
 * never loaded: Node creates every socket and is its only holder, listeners are
 * plain node:net servers and dgram sockets, and upgrades are refused with
 * ERR_ECDYSIS_UPGRADE_UNSUPPORTED (nothing can hand a socket Node owns to
 * another process). Serving, events, stop and drain behave as on Linux.
 */
import { EcdysisError } from '../errors.ts';

/** The variable that forces local mode on Linux ('1'); off Linux it is always on. */
export const LOCAL_ENV = 'ECDYSIS_LOCAL';

let decided: boolean | undefined;

/**
 * Whether this process runs in local mode. Decided once, at the first call
 * (Ecdysis.create(), or the CLI's first connection): a process never changes
 * mode halfway. ECDYSIS_LOCAL must be '1', '0' or unset; off Linux, '0' cannot
 * turn local mode off (there is nothing else).
 *
 * @throws {EcdysisError} ERR_ECDYSIS_INVALID_OPTION for another value.
 */
export function localMode(env: NodeJS.ProcessEnv = process.env, platform: NodeJS.Platform = process.platform): boolean {
  if (decided !== undefined) return decided;
  const value = env[LOCAL_ENV];
  if (value !== undefined && value !== '' && value !== '0' && value !== '1') {
    throw new EcdysisError('ERR_ECDYSIS_INVALID_OPTION', `${LOCAL_ENV} must be 1 (local mode), 0 or unset, got ${JSON.stringify(value.slice(0, 32))}`, { option: LOCAL_ENV });
  }
  decided = platform !== 'linux' || value === '1';
  return decided;
}

/** Why this process is in local mode, for messages. */
export function localReason(platform: NodeJS.Platform = process.platform): string {
  return platform === 'linux' ? `${LOCAL_ENV}=1 is set` : `this is ${platform}, not Linux`;
}

/** The refusal of every upgrade in local mode. */
export function upgradeUnsupported(generation: number): EcdysisError {
  return new EcdysisError(
    'ERR_ECDYSIS_UPGRADE_UNSUPPORTED',
    `generation ${generation} runs in local mode (${localReason()}): upgrades need Linux, where ecdysis's addon holds the sockets ` +
      'and hands them to the next process; here Node holds them alone. This generation keeps serving; restart it to run new code.',
  );
}

/** A kind (or feature) Node does not have off Linux: refused in local mode. */
export function unsupportedInLocalMode(what: string, instead: string): EcdysisError {
  return new EcdysisError('ERR_ECDYSIS_UNSUPPORTED', `${what} in local mode (${localReason()}): ${instead}`);
}

/** The kinds local mode has on this platform, for messages. */
export function localKinds(platform: NodeJS.Platform = process.platform): string {
  return platform === 'win32'
    ? 'local mode on Windows has TCP (listenTcp) and UDP (listenUdp)'
    : 'local mode has TCP (listenTcp), Unix stream (listenUnix) and UDP (listenUdp)';
}

const warned = new Set<string>();

/**
 * A Linux-only feature that was asked for and is off in local mode: said once
 * per feature and process, with a code (the library never prints).
 */
export function warnLocalOnce(feature: string, message: string): void {
  if (warned.has(feature)) return;
  warned.add(feature);
  process.emitWarning(`local mode (${localReason()}): ${message}`, { code: 'ECDYSIS_LOCAL_MODE' });
}

/**
 * What the registry holds for a socket in local mode instead of an fd of its
 * own: the Node object that created the socket (listeners/local-socket.ts).
 */
export interface LocalHandle {
  /** Peers let in and not handed to a listener yet. */
  readonly queued: boolean;
  /** Close the socket (a full stop); what is held is destroyed. */
  close(): void;
}
