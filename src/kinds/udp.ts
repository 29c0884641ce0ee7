/** UDP sockets (IPv4 and IPv6). */
import { invalidOption } from '../errors.ts';
import { closeQuietly, native } from '../internal/native.ts';
import { UdpSocket } from '../listeners/udp-socket.ts';
import {
  INET_OPTIONS,
  checkOptions,
  inetAddress,
  inetOptions,
  optionalBoolean,
  optionalName,
  type InetOptions,
  type KindSpec,
  type ListenRequest,
} from './kind.ts';

/** Options of {@link Ecdysis.listenUdp}. */
export interface UdpListenOptions extends InetOptions {
  /** IP address or host name to bind. Default '::' (dual-stack), or '0.0.0.0' where IPv6 is off. */
  host?: string;
  /** Port; 0 picks a free one (the next generation asking for port 0 again gets the same socket). Not with `systemd`. */
  port?: number;
  /** The name of a socket systemd passed (FileDescriptorName=, ListenDatagram=): adopted, never created. */
  systemd?: string;
  /** Keep reading through a stop (never through an upgrade). Default true. */
  stopOnShutdown?: boolean;
  /** Hand-over key; default derived from the requested host and port. */
  name?: string;
}

const OPTIONS = ['host', 'port', ...INET_OPTIONS, 'stopOnShutdown', 'name', 'systemd'] as const;

/** Datagrams waiting in the kernel's buffer, not read yet. */
export function hasUnread(fd: number): boolean {
  try {
    return native().pendingBytes(fd) > 0;
  } catch {
    return false;
  }
}

export const udp: KindSpec = {
  kind: 'udp',
  family: 'inet',
  type: 'dgram',
  listening: false,
  async refuseNew() {
    // Nothing to refuse: a datagram that arrives after the close is dropped, as
    // it would be by any host without the port.
  },
  readmit() {},
  hasQueued: (socket) => hasUnread(socket.fd),
};

export async function udpRequest(input: UdpListenOptions): Promise<ListenRequest<UdpSocket>> {
  if (input === undefined) throw invalidOption('options', 'must be an object', input);
  const options = checkOptions(input, OPTIONS);
  // Not SO_REUSEADDR: on UDP it lets a second socket bind the same port silently
  // (the TIME_WAIT it avoids for TCP does not exist here). reusePort shares on purpose.
  const flags = { ...inetOptions(options), reuseAddr: false };
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const name = optionalName(options);
  const address = await inetAddress('udp', options, (host, port, ipv6Only) =>
    native().bindUdp(host, port, { ...flags, ...(ipv6Only === undefined ? {} : { ipv6Only }) }),
  );
  return {
    spec: udp,
    name,
    ...address,
    async discard(created) {
      closeQuietly(created.fd);
    },
    listener: (socket) => new UdpSocket({ key: socket.key, fd: socket.fd, inherited: socket.inherited, stopOnShutdown, host: socket.host!, port: socket.port! }),
  };
}
