import type { KindSpec, SocketKind } from './kind.ts';
import { tcp } from './tcp.ts';
import { udp } from './udp.ts';
import { unix } from './unix.ts';
import { unixDatagram } from './unix-datagram.ts';
import { unixSeqpacket } from './unix-seqpacket.ts';

/** Every kind this version knows. */
export const KINDS: Readonly<Record<SocketKind, KindSpec>> = { tcp, unix, udp, 'unix-datagram': unixDatagram, 'unix-seqpacket': unixSeqpacket };

/** The kind's spec, or undefined for a kind this version does not know (a newer parent's). */
export function kindOf(kind: string): KindSpec | undefined {
  return Object.hasOwn(KINDS, kind) ? KINDS[kind as SocketKind] : undefined;
}
