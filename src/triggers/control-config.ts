/**
 * A control socket named in the trigger lists (`upgradeOn: [{ socket, ... }]`),
 * validated with messages that name the option.
 */
import { resolve as resolvePath } from 'node:path';
import { invalidOption } from '../errors.ts';
import { validateInteger } from '../internal/validate.ts';
import type { ControlSocketConfig } from './control-socket.ts';
import type { TriggerAction } from './signals.ts';

export type { ControlSocketConfig };

const CONTROL_FIELDS = ['socket', 'mode', 'group', 'allowUids', 'allowGids'];

/**
 * A control socket named in a trigger list. The same path may be in several
 * lists (one socket that upgrades and stops); its mode, group, allowUids and allowGids, if
 * given more than once, must agree.
 */
export function addControlSocket(sockets: Map<string, ControlSocketConfig>, trigger: Record<string, unknown>, action: TriggerAction, where: string): void {
  for (const name of Object.keys(trigger)) {
    if (!CONTROL_FIELDS.includes(name)) throw invalidOption(`${where}.${name}`, `is not a control socket field (known: ${CONTROL_FIELDS.join(', ')})`, trigger[name]);
  }
  const path = trigger.socket;
  if (typeof path !== 'string' || path === '' || path === '\0' || path.indexOf('\0', 1) !== -1) {
    throw invalidOption(`${where}.socket`, 'must be a filesystem path or an abstract name starting with "\\0"', path);
  }
  const full = path.startsWith('\0') ? path : resolvePath(path);
  const mode = trigger.mode === undefined ? undefined : validateInteger(trigger.mode, `${where}.mode`, 0, 0o777);
  const group = trigger.group;
  if (group !== undefined && !(typeof group === 'string' && group !== '') && !(typeof group === 'number' && Number.isInteger(group) && group >= 0)) {
    throw invalidOption(`${where}.group`, 'must be a group name or a gid', group);
  }
  const allowUids = validateIds(trigger.allowUids, `${where}.allowUids`, 'uids');
  const allowGids = validateIds(trigger.allowGids, `${where}.allowGids`, 'gids');
  const existing = sockets.get(full);
  if (!existing) {
    sockets.set(full, { path: full, actions: [action], mode: mode ?? 0o600, group: group as string | number | undefined, allowUids: allowUids ?? [], allowGids: allowGids ?? [] });
    return;
  }
  const differs = (given: number[] | undefined, had: number[]) => given !== undefined && JSON.stringify(given) !== JSON.stringify(had);
  if ((mode !== undefined && mode !== existing.mode) || (group !== undefined && group !== existing.group) || differs(allowUids, existing.allowUids) || differs(allowGids, existing.allowGids)) {
    throw invalidOption(where, `gives the control socket ${JSON.stringify(path)} other settings than an earlier trigger`, trigger);
  }
  if (!existing.actions.includes(action)) existing.actions.push(action);
}

/** uids or gids: integers from 0 to 2^32 - 2 (-1 means "none" to the kernel). */
function validateIds(ids: unknown, where: string, what: string): number[] | undefined {
  if (ids !== undefined && (!Array.isArray(ids) || !ids.every((id) => Number.isInteger(id) && id >= 0 && id <= 0xffff_fffe))) {
    throw invalidOption(where, `must be an array of ${what}`, ids);
  }
  return ids as number[] | undefined;
}
