import { optionalInteger } from './kind.ts';

/** A Unix socket file mode: permission bits only (setuid and friends mean nothing here and hide mistakes). */
export function optionalMode(options: Record<string, unknown>): number | undefined {
  return options.mode === undefined ? undefined : optionalInteger(options, 'mode', 0, 0, 0o777);
}
