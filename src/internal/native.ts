/**
 * The typed surface of the C++ addon (found and opened by addon-file.ts). The addon does only what
 * Node cannot: create sockets itself (TCP, UDP, Unix stream, datagram and
 * seqpacket) with the options Node does not set, duplicate, describe and close
 * fds, drive datagram and seqpacket sockets with its own poll handles, send
 * sd_notify datagrams, and signal a process through a pidfd. Everything it
 * creates is close-on-exec.
 */
import { openAddon } from './addon-file.ts';

/** Options of `listenTcp` and `bindUdp` that exist on every IP socket. Missing means off/0. */
export interface InetSocketOptions {
  /** SO_REUSEADDR. */
  reuseAddr?: boolean;
  /** SO_REUSEPORT: several sockets bind the same address and the kernel spreads the load. */
  reusePort?: boolean;
  /** IPV6_V6ONLY on an IPv6 socket (always set explicitly: the default is a sysctl). */
  ipv6Only?: boolean;
  /** IP_FREEBIND / IPV6_FREEBIND: bind an address not (yet) configured on this host. */
  freebind?: boolean;
  /** IP_TRANSPARENT / IPV6_TRANSPARENT (needs CAP_NET_ADMIN or CAP_NET_RAW). */
  transparent?: boolean;
  /** SO_RCVBUF in bytes; 0 = kernel default. The kernel doubles it and caps it at net.core.rmem_max. */
  recvBufferSize?: number;
  /** SO_SNDBUF in bytes; 0 = kernel default. The kernel doubles it and caps it at net.core.wmem_max. */
  sendBufferSize?: number;
}

/** `listenTcp` options (kinds/tcp.ts passes every inet option, plus fastOpen and deferAccept). */
export interface TcpSocketFlags extends InetSocketOptions {
  /** TCP_FASTOPEN queue length; 0 = off. */
  fastOpen?: number;
  /** TCP_DEFER_ACCEPT in seconds; 0 = off. */
  deferAccept?: number;
}

export type UdpSocketOptions = InetSocketOptions;

/**
 * The file a Unix socket bound to a filesystem path gets. Without `mode`, as
 * the umask and the directory make it; with it, the file is created with
 * exactly that mode and group: it never exists with others.
 */
export interface UnixFileOptions {
  /** Permission bits (at most 0o777). */
  mode?: number;
  /** The file's group (with `mode` only). */
  gid?: number;
}

export interface UnixDatagramOptions extends UnixFileOptions {
  recvBufferSize?: number;
  sendBufferSize?: number;
  /** SO_PASSCRED from before the bind: every datagram queued carries its sender's credentials. */
  passCredentials?: boolean;
}

/** The options set on a socket, read back from the kernel; what does not apply is absent. */
export interface SocketOptionValues {
  recvBufferSize: number;
  sendBufferSize: number;
  reuseAddr?: boolean;
  reusePort?: boolean;
  ipv6Only?: boolean;
  freebind?: boolean;
  transparent?: boolean;
  fastOpen?: number;
  /** Rounded up by the kernel to its SYN-ACK retransmission steps (5 reads back as 7). */
  deferAccept?: number;
}

export type UnixListenType = 'stream' | 'seqpacket';
export type UnixConnectType = 'stream' | 'dgram' | 'seqpacket';

export interface FdDescription {
  /** False for a regular file, pipe or device. */
  socket: boolean;
  inode: number;
  cloexec: boolean;
  domain?: 'inet' | 'inet6' | 'unix' | 'other';
  type?: 'stream' | 'dgram' | 'seqpacket' | 'other';
  /** Never true for a datagram socket. */
  listening?: boolean;
  address?: string;
  port?: number;
  /** Unix sockets: the bound path; an abstract name starts with '\0'; absent when unbound. */
  path?: string;
}

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * A system error as Node shapes its own: `code` ('EAGAIN'), negative `errno`,
 * `syscall` ('sendto'), and for a refused socket option the `option` name.
 */
export interface NativeSystemError extends Error {
  code: string;
  errno?: number;
  syscall?: string;
  address?: string;
  option?: string;
  /** EMSGSIZE on receive: the size of the message that was dropped. */
  size?: number;
}

export interface PacketSocketCallbacks {
  /**
   * One message, in its own Buffer of exactly its size. 'datagram' mode: the
   * sender's IP and port (UDP), its path (Unix; an abstract name starts with
   * '\0'), or undefined for an unbound Unix sender. 'connected' mode: no address.
   * `fds`: with `receiveFds` only, the fds passed with the message (the callee owns them).
   * `sender`: with `credentials` only, who sent it (SCM_CREDENTIALS, pids of
   * this pid namespace); undefined when the datagram carries none (sent before
   * SO_PASSCRED was on).
   */
  onMessage(data: Buffer, address: string | undefined, port: number | undefined, fds?: number[], sender?: PeerCredentials): void;
  /** A failed receive or queued send, or a dropped oversized message (code 'EMSGSIZE'). */
  onError(err: NativeSystemError): void;
  /** 'connected' mode: the peer shut down or closed (0-byte read, or ECONNRESET). */
  onEnd?(): void;
  /** The send queue emptied after `send()` returned false. */
  onDrain?(): void;
}

/** A datagram or seqpacket socket driven by the addon's own libuv poll handle. */
export interface PacketSocket {
  /** Deliver messages to `onMessage` (at most 64 per loop turn). */
  startReading(): void;
  /** Stop delivering; messages wait in the kernel (backpressure, pause). */
  stopReading(): void;
  /**
   * Send one message: at once when the kernel takes it, else queued until the
   * socket is writable. Returns false once `writableLength` reaches
   * `writableHighWaterMark`; `onDrain` follows when the queue is empty.
   * 'datagram' mode takes the destination (IP and port, or a Unix path; none on
   * a connected socket); 'connected' mode takes none and refuses empty messages.
   * `owner` (a Unix filesystem path only; ignored for an abstract name): send
   * only if the path is a socket file owned by this uid, opened without
   * following a symlink there, and send through that very file.
   * @throws a system error for an immediate failure (EMSGSIZE, ENOENT, EPIPE...);
   * ENOTSOCK or EPERM (syscall 'sendto') when `owner` does not hold.
   */
  send(data: Buffer | Uint8Array, address?: string, port?: number, owner?: number): boolean;
  /**
   * 'connected' mode: one message with `fds` attached (SCM_RIGHTS); the caller
   * keeps its own fds (queued messages hold duplicates). Queueing as send().
   */
  sendWithFds(data: Buffer | Uint8Array, fds: number[]): boolean;
  /** Bytes waiting in the send queue. */
  readonly writableLength: number;
  readonly writableHighWaterMark: number;
  /** 'connected' mode: SHUT_WR once the queue is flushed; the peer then reads the end. */
  shutdown(): void;
  /** Close the fd; idempotent; nothing is called back afterwards. */
  close(): void;
  /** Whether an active socket keeps the event loop alive (default: it does). */
  ref(): void;
  unref(): void;
  /** The owned fd; -1 once closed. */
  readonly fd: number;
}

export interface PacketSocketOptions {
  /**
   * 'connected' mode: take the fds a peer passes with its messages (SCM_RIGHTS,
   * at most 64 per message) and hand them to `onMessage`, which then owns them.
   * Off by default: the kernel drops them and this process never holds one.
   */
  receiveFds?: boolean;
  /**
   * 'datagram' mode on a Unix socket: turn SO_PASSCRED on and give `onMessage`
   * each sender's uid (no fds: the kernel drops any a sender passes).
   */
  credentials?: boolean;
}

export interface PacketSocketConstructor {
  /**
   * Takes ownership of `fd` (a SOCK_DGRAM socket for 'datagram', SOCK_SEQPACKET
   * for 'connected') when it returns; if it throws, the caller still owns it.
   */
  new (fd: number, mode: 'datagram' | 'connected', callbacks: PacketSocketCallbacks, options?: PacketSocketOptions): PacketSocket;
}

export interface SeqpacketServerCallbacks {
  /** A new connection's fd (non-blocking, close-on-exec): the callee owns it. */
  onConnection(fd: number): void;
  onError(err: NativeSystemError): void;
}

/** Accepts connections on a listening Unix seqpacket (or stream) socket. */
export interface SeqpacketServer {
  /** Accept (at most 64 per loop turn) and hand each fd to `onConnection`. */
  start(): void;
  /** Stop accepting; connections wait in the kernel's accept queue. */
  stop(): void;
  /** Close the listening fd; idempotent; nothing is called back afterwards. */
  close(): void;
  ref(): void;
  unref(): void;
  readonly fd: number;
}

export interface SeqpacketServerConstructor {
  /** Takes ownership of the listening `fd` when it returns. */
  new (fd: number, callbacks: SeqpacketServerCallbacks): SeqpacketServer;
}

export interface NativeBinding {
  listenTcp(host: string, port: number, backlog: number, flags: TcpSocketFlags): number;
  /** A bound AF_INET/AF_INET6 SOCK_DGRAM socket. */
  bindUdp(host: string, port: number, options?: UdpSocketOptions): number;
  listenUnix(path: string, backlog: number, type?: UnixListenType, options?: UnixFileOptions): number;
  /** A bound AF_UNIX SOCK_DGRAM socket (path, or abstract name starting with '\0'). */
  bindUnixDatagram(path: string, options?: UnixDatagramOptions): number;
  /**
   * Give the socket file at `path` this mode (and group) if it is still the
   * socket file with this inode: the path is opened without following a link
   * and changed through that fd. Returns whether anything changed; ENOTSOCK or
   * EEXIST when the path names another file.
   */
  setSocketFileMode(path: string, inode: number, mode: number, gid?: number): boolean;
  /** A connected pair of Unix sockets, non-blocking and close-on-exec. */
  socketPair(type: 'stream' | 'seqpacket'): [number, number];
  /** A connected, unbound, non-blocking client socket; EAGAIN, ECONNREFUSED, ENOENT throw. */
  connectUnix(path: string, type?: UnixConnectType): number;
  dupCloexec(fd: number): number;
  setCloexec(fd: number, on: boolean): void;
  close(fd: number): void;
  describe(fd: number): FdDescription;
  /** The socket options, read back from the kernel. */
  socketOptions(fd: number): SocketOptionValues;
  /** A listening socket has a connection waiting to be accepted. */
  hasPendingConnection(fd: number): boolean;
  /** SIOCINQ: the next datagram's size (0 when none), or a stream's unread bytes. */
  pendingBytes(fd: number): number;
  /**
   * One non-blocking sendto: to an IP and port (AF_INET/6), a Unix path ('\0'
   * prefix = abstract; port ignored), or the connected peer (no address).
   * Returns the bytes sent; a full queue throws EAGAIN.
   */
  sendDatagram(fd: number, data: Buffer | Uint8Array, address?: string, port?: number): number;
  /** TCP listener about to close: drop new SYNs so no handshake completes any more. */
  refuseNewConnections(fd: number): void;
  /** Undo refuseNewConnections (SO_DETACH_FILTER); throws ENOENT when there is none. */
  acceptNewConnections(fd: number): void;
  /** TCP listener: established connections not yet accepted. */
  acceptQueueLength(fd: number): number;
  /** SO_ATTACH_REUSEPORT_CBPF: a classic BPF program (code, jt, jf, k per instruction) picks the group's socket. */
  attachReuseportProgram(fd: number, program: number[]): void;
  /** SO_REUSEPORT on an existing socket. */
  setReusePort(fd: number): void;
  /**
   * One datagram to an AF_UNIX SOCK_DGRAM socket, sd_notify-style: a path, or an
   * abstract name written with a leading '@'. Non-blocking: a full queue throws EAGAIN.
   */
  notify(socketPath: string, message: string, fds?: number[]): void;
  /** PR_SET_CHILD_SUBREAPER: orphaned descendants are re-parented to this process. */
  setChildSubreaper(on: boolean): void;
  /**
   * Every exited child, reaped, except the pids in `leave` (the ones Node
   * spawned: libuv must reap those itself, or their handle keeps the process alive).
   */
  reapChildren(leave?: number[]): { pid: number; exitCode: number | null; signal: NodeJS.Signals | number | null }[];
  /** SO_PEERCRED: who is at the other end of a Unix socket. */
  peerCredentials(fd: number): PeerCredentials;
  /** pidfd_open: an fd (close-on-exec) for that process; ESRCH when there is none, ENOSYS before Linux 5.3. */
  pidfdOpen(pid: number): number;
  /** pidfd_send_signal (a signal number; 0 checks only): ESRCH once that process has exited, whoever has its pid now. */
  pidfdSendSignal(pidfd: number, signal: number): void;
  /** What spawnProcess can do here: set a working directory (glibc 2.29 on), watch its child (pidfd, Linux 5.3 on). */
  spawnFeatures(): { chdir: boolean; pidfd: boolean };
  /**
   * posix_spawn (no fork: no copy of this process's page tables): `fds[i]`
   * becomes the child's fd i (-1: closed; fds 0-2 /dev/null), nothing else is
   * inherited; signals unblocked and at their defaults; `cwd` null keeps this
   * process's. `file` is a path (no PATH search). The pidfd (close-on-exec) is
   * the caller's: give it to a ProcessWatch, which reaps the child. Throws a
   * system error, syscall 'posix_spawn', when the program or the directory
   * cannot be used.
   */
  spawnProcess(file: string, argv: string[], env: string[], cwd: string | null, fds: number[]): { pid: number; pidfd: number };
  /**
   * spawnProcess on a thread of the addon: this thread does not wait for the
   * child's exec. Arguments are checked and the fds duplicated before it
   * returns (the caller may close its own); `done` runs on this thread. Absent
   * from an addon built before it existed (an old prebuild).
   */
  spawnProcessAsync?: (
    file: string,
    argv: string[],
    env: string[],
    cwd: string | null,
    fds: number[],
    done: (err: Error | null, started?: { pid: number; pidfd: number }) => void,
  ) => void;
  PacketSocket: PacketSocketConstructor;
  SeqpacketServer: SeqpacketServerConstructor;
  ProcessWatch: ProcessWatchConstructor;
}

/** A child of spawnProcess, watched through its pidfd until it exits, then reaped. */
export interface ProcessWatch {
  /** Through the pidfd; false once the child has exited (nothing sent). */
  kill(signal: number): boolean;
  /** Stops watching and closes the pidfd (the child is then never reaped here). */
  close(): void;
  ref(): void;
  unref(): void;
  readonly fd: number;
}

export interface ProcessWatchConstructor {
  /** Takes ownership of `pidfd`; `onExit` once, with the exit code or the signal number (both null: reaped elsewhere). */
  new (pidfd: number, pid: number, callbacks: { onExit(exitCode: number | null, signal: number | null): void }): ProcessWatch;
}

let binding: NativeBinding | undefined;

/** The addon, loaded on first use so that importing the library never throws. */
export function native(): NativeBinding {
  binding ??= openAddon() as NativeBinding;
  return binding;
}

/** Close an fd, ignoring EBADF (already closed): used on cleanup paths only. */
export function closeQuietly(fd: number): void {
  try {
    native().close(fd);
  } catch {
    // Cleanup must not throw; the fd is gone either way.
  }
}
