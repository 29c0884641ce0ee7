/** UDP sockets (IPv4 and IPv6). */
import { invalidOption } from '../errors.ts';
import { closeQuietly, native } from '../internal/native.ts';
import {
  INET_OPTIONS,
  checkOptions,
  hasUnread,
  inetAddress,
  inetOptions,
  optionalBoolean,
  optionalName,
  type InetOptions,
  type KindSpec,
  type ListenRequest,
} from './kind.ts';
import type { Socket as DgramSocket } from 'node:dgram';
import { dgram } from '../internal/builtins.ts';
import { Datagram, DatagramListener, type DatagramData } from '../listeners/datagram-listener.ts';
import type { ListenerConfig } from '../listeners/base-listener.ts';
import type { LocalDatagramSocket } from '../listeners/local-socket.ts';
import { localMode } from '../internal/local-mode.ts';
import { bindLocalUdp, datagramSource, ignoreInLocalMode } from './local.ts';

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
  hasQueued: (socket) => (socket.local ? socket.local.queued : hasUnread(socket.fd)),
};

export async function udpRequest(input: UdpListenOptions): Promise<ListenRequest<UdpSocket>> {
  if (input === undefined) throw invalidOption('options', 'must be an object', input);
  const options = checkOptions(input, OPTIONS);
  // Not SO_REUSEADDR: on UDP it lets a second socket bind the same port silently
  // (the TIME_WAIT it avoids for TCP does not exist here). reusePort shares on purpose.
  const flags = { ...inetOptions(options), reuseAddr: false };
  const stopOnShutdown = optionalBoolean(options, 'stopOnShutdown', true);
  const name = optionalName(options);
  const address = await inetAddress('udp', options, (host, port, ipv6Only, reusePort) =>
    native().bindUdp(host, port, { ...flags, ...(ipv6Only === undefined ? {} : { ipv6Only }), ...(reusePort ? { reusePort } : {}) }),
  );
  if (localMode() && address.systemd === undefined) {
    ignoreInLocalMode('listenUdp', options, ['reusePort', 'freebind', 'transparent']);
    const { host, port } = address.address;
    address.create = () => bindLocalUdp(options.host !== undefined, host!, port!, flags);
  }
  return {
    spec: udp,
    name,
    ...address,
    async discard(created) {
      const { local } = datagramSource({ ...created, key: '', kind: 'udp' });
      if (local) {
        local.close();
        local.dispose();
      } else closeQuietly(created.fd);
    },
    listener: (socket) => new UdpSocket({ key: socket.key, ...datagramSource(socket), inherited: socket.inherited, stopOnShutdown, host: socket.host!, port: socket.port! }),
  };
}

/**
 * A bound UDP socket owned by the registry. Node's dgram reads it (on a
 * duplicate, while a consumer wants datagrams); the kernel buffers the rest.
 */
export class UdpSocket extends DatagramListener {
  readonly kind = 'udp' as const;
  /** The bound address. */
  readonly host: string;
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number;
  readonly #family: 'IPv4' | 'IPv6';
  #dgram: DgramSocket | undefined;
  /** Local mode: the socket Node created and holds. */
  readonly #local: LocalDatagramSocket | undefined;

  /** @internal */
  constructor(config: ListenerConfig & { host: string; port: number; local?: LocalDatagramSocket | undefined }) {
    super(config);
    this.host = config.host;
    this.port = config.port;
    this.#family = config.host.includes(':') ? 'IPv6' : 'IPv4';
    this.#local = config.local;
  }

  /** Like dgram.Socket#address(). */
  address(): { address: string; family: 'IPv4' | 'IPv6'; port: number } {
    return { address: this.host, family: this.#family, port: this.port };
  }

  /**
   * The dgram.Socket this generation reads with, while it reads (undefined
   * otherwise; in local mode, the one socket, always): for socket options such
   * as addMembership or setBroadcast, which apply to the kernel socket every
   * generation shares.
   */
  get dgram(): DgramSocket | undefined {
    return this.#dgram ?? this.#local?.socket;
  }

  /**
   * Send one datagram to `port` and `address`; resolves once it is handed to the
   * kernel. Works while this generation lives, reading or not.
   *
   * @example
   * await udp.send(Buffer.from('ping'), 5353, '127.0.0.1');
   */
  send(data: DatagramData, port: number, address: string): Promise<void> {
    return this.sendTo(data, address, port);
  }

  protected override sendNow(data: Buffer | Uint8Array, address: string, port: number): Promise<void> | undefined {
    const socket = this.#dgram ?? this.#local?.socket;
    if (!socket) return undefined;
    return new Promise((resolve, reject) => socket.send(data, port, address, (err) => (err ? reject(err) : resolve())));
  }

  /** @internal The generation is done: the socket Node holds (local mode) closes too. */
  override dispose(): void {
    super.dispose();
    this.#local?.dispose();
  }

  protected override startServing(fd: number | undefined): void {
    if (fd === undefined) {
      const local = this.#local!;
      this.#dgram = local.socket;
      return local.attach(({ data, info }) => this.feed.push(new Datagram(this, data, info.address, info.port, info.family as 'IPv4' | 'IPv6')));
    }
    const socket = dgram().createSocket({ type: this.#family === 'IPv6' ? 'udp6' : 'udp4' });
    socket.on('message', (data, info) => this.feed.push(new Datagram(this, data, info.address, info.port, info.family as 'IPv4' | 'IPv6')));
    // Receive errors (ICMP-reported, ENOBUFS...) are transient for a bound socket.
    socket.on('error', () => {});
    this.#dgram = socket;
    socket.bind({ fd });
  }

  protected override stopServing(): void {
    const socket = this.#dgram;
    this.#dgram = undefined;
    if (this.#local) return this.#local.detach();
    // Closes only this listener's duplicate; the registry's fd keeps the socket open.
    socket?.close();
  }
}
