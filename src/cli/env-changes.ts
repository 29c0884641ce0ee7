/**
 * `ecdysis upgrade --env KEY=VALUE --env-file FILE`: the next generation's
 * environment changes, checked here (names, sizes) and turned into the control
 * protocol's `env {...}` lines, each within a line's bound. Values are never
 * printed.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { ENV_NAME, MAX_ENV_BYTES, MAX_ENV_VARIABLES, MAX_LINE_BYTES } from '../wire/control-protocol.ts';

/** A refusal of what was given, with the code the server would give. */
export class EnvChangeError extends Error {
  readonly code = 'ERR_ECDYSIS_INVALID_OPTION';
}

/** The `env` lines for these `--env KEY=VALUE` pairs and `--env-file` (the pairs win over the file). */
export function environmentChanges(pairs: readonly string[], file: string | undefined): string[] {
  const changes = new Map<string, string>();
  if (file !== undefined) for (const [name, value] of parseEnvFile(file)) changes.set(name, value);
  for (const pair of pairs) {
    const at = pair.indexOf('=');
    if (at <= 0) throw new EnvChangeError(`--env ${JSON.stringify(pair.split('=')[0]!.slice(0, 64))}: give KEY=VALUE`);
    changes.set(check(pair.slice(0, at), '--env'), pair.slice(at + 1));
  }
  const bytes = [...changes].reduce((n, [name, value]) => n + Buffer.byteLength(name) + Buffer.byteLength(value), 0);
  if (changes.size > MAX_ENV_VARIABLES || bytes > MAX_ENV_BYTES) {
    throw new EnvChangeError(`${changes.size} variables of ${bytes} bytes: at most ${MAX_ENV_VARIABLES} variables and ${MAX_ENV_BYTES} bytes of environment per upgrade`);
  }
  // As few lines as fit the protocol's line bound.
  const lines: string[] = [];
  let batch: Record<string, string> = {};
  const flush = () => {
    if (Object.keys(batch).length > 0) lines.push(`env ${JSON.stringify(batch)}`);
    batch = {};
  };
  for (const [name, value] of changes) {
    if (Buffer.byteLength(`env ${JSON.stringify({ [name]: value })}`) > MAX_LINE_BYTES) throw new EnvChangeError(`${name}: a value longer than a control line allows (${MAX_LINE_BYTES} bytes with its name)`);
    if (Buffer.byteLength(`env ${JSON.stringify({ ...batch, [name]: value })}`) > MAX_LINE_BYTES) flush();
    batch[name] = value;
  }
  flush();
  return lines;
}

/** KEY=VALUE lines; blank lines and # comments skipped; a value in matching quotes loses them. Never followed through a symlink. */
function parseEnvFile(file: string): [string, string][] {
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    throw new EnvChangeError(`--env-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let text: string;
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) throw new EnvChangeError(`--env-file ${file}: not a regular file`);
    if (stat.size > MAX_ENV_BYTES + 16 * 1024) throw new EnvChangeError(`--env-file ${file} is ${stat.size} bytes: at most ${MAX_ENV_BYTES} bytes of environment per upgrade`);
    const buffer = Buffer.alloc(stat.size);
    const read = readSync(fd, buffer, 0, stat.size, 0);
    text = buffer.subarray(0, read).toString('utf8');
  } finally {
    closeSync(fd);
  }
  const entries: [string, string][] = [];
  text.split('\n').forEach((raw, index) => {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const at = line.indexOf('=');
    if (at <= 0) throw new EnvChangeError(`--env-file ${file}, line ${index + 1}: not KEY=VALUE`);
    const name = check(line.slice(0, at).trim().replace(/^export\s+/, ''), `--env-file ${file}, line ${index + 1}`);
    let value = line.slice(at + 1);
    const quoted = /^(["'])(.*)\1$/.exec(value.trim());
    if (quoted) value = quoted[2]!;
    entries.push([name, value]);
  });
  return entries;
}

function check(name: string, where: string): string {
  if (!ENV_NAME.test(name)) throw new EnvChangeError(`${where}: ${JSON.stringify(name.slice(0, 64))} is not an environment variable's name`);
  return name;
}
