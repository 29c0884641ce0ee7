/** Every kind this version knows. */
import type { KindSpec, SocketKind } from './kind.ts';
import { tcp } from './tcp.ts';
import { unix } from './unix.ts';

export const KINDS: Partial<Record<SocketKind, KindSpec>> = { tcp, unix };

/** The kind's spec, or undefined for a kind this version does not know (a newer parent's). */
export function kindOf(kind: string): KindSpec | undefined {
  return Object.hasOwn(KINDS, kind) ? KINDS[kind as SocketKind] : undefined;
}
