/** The `probes` option: where the probe listener listens, validated with messages that name the option. */
import { resolve as resolvePath } from 'node:path';
import { invalidOption } from '../errors.ts';
import { validateInteger } from '../internal/validate.ts';

/** `{ port, host }` (TCP; host 127.0.0.1 by default) or `{ socket, mode }` (a Unix path or an abstract name). */
export type ProbesOption = { port: number; host?: string } | { socket: string; mode?: number };

export type ProbesConfig = { kind: 'tcp'; host: string; port: number } | { kind: 'unix'; path: string; mode: number | undefined };

const TCP_FIELDS = ['port', 'host'];
const UNIX_FIELDS = ['socket', 'mode'];

export function resolveProbes(value: unknown, where: string): ProbesConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalidOption(where, 'must be { port, host } or { socket }', value);
  const option = value as Record<string, unknown>;
  const fields = 'socket' in option ? UNIX_FIELDS : TCP_FIELDS;
  for (const name of Object.keys(option)) {
    if (!fields.includes(name)) throw invalidOption(`${where}.${name}`, `is not a field of ${where} (known: ${fields.join(', ')})`, option[name]);
  }
  if ('socket' in option) {
    const path = option.socket;
    if (typeof path !== 'string' || path === '' || path === '\0' || path.indexOf('\0', 1) !== -1) {
      throw invalidOption(`${where}.socket`, 'must be a filesystem path or an abstract name starting with "\\0"', path);
    }
    const mode = option.mode === undefined ? undefined : validateInteger(option.mode, `${where}.mode`, 0, 0o777);
    return { kind: 'unix', path: path.startsWith('\0') ? path : resolvePath(path), mode };
  }
  const port = validateInteger(option.port, `${where}.port`, 0, 65535);
  const host = option.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw invalidOption(`${where}.host`, 'must be a non-empty string', host);
  return { kind: 'tcp', host, port };
}
