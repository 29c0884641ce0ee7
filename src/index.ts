/**
 * ecdysis: graceful, zero-downtime restarts for Node.js network services.
 * This is the only public entry point.
 */
export { Ecdysis } from './ecdysis.ts';
export type { EcdysisEvent, EcdysisState, ExitInfo, ExitMode, WaitForParentOptions } from './ecdysis.ts';
export { EcdysisError, ErrorCodes, isEcdysisError } from './errors.ts';
export type { ErrorCode } from './errors.ts';
export type { EcdysisOptions, CommandOverride } from './lifecycle/options.ts';
export type { Trigger } from './triggers/signals.ts';
export type { SpawnCommand } from './generation/successor.ts';
export type { DrainOptions, DrainResult } from './listeners/drain.ts';
export { StreamListener } from './listeners/stream-listener.ts';
export type { ConnectionSink, GrpcServerLike } from './listeners/stream-listener.ts';
export type { IterateOptions } from './listeners/feed.ts';
export type { Listener } from './listeners/listener.ts';
export type { SocketKind } from './wire/sockets.ts';
export { TcpListener } from './kinds/tcp.ts';
export type { TcpListenOptions } from './kinds/tcp.ts';
export { UnixListener } from './kinds/unix.ts';
export type { UnixListenOptions } from './kinds/unix.ts';
export type { InetOptions } from './kinds/kind.ts';
export { UdpSocket } from './kinds/udp.ts';
export type { UdpListenOptions } from './kinds/udp.ts';
export { DatagramSocket } from './kinds/unix-datagram.ts';
export type { UnixDatagramListenOptions } from './kinds/unix-datagram.ts';
export { Datagram } from './listeners/datagram-listener.ts';
export type { DatagramData, DatagramFamily } from './listeners/datagram-listener.ts';
export { SeqpacketListener } from './kinds/unix-seqpacket.ts';
export { SeqpacketSocket } from './listeners/seqpacket-socket.ts';
export type { UnixSeqpacketListenOptions } from './kinds/unix-seqpacket.ts';
export type { PeerCredentials } from './internal/native.ts';
export { Handoff } from './generation/handoff-send.ts';
export type { HandoffHandler, HandoffSocketOptions } from './generation/handoff-send.ts';
export type { Inherited } from './generation/handoff-receive.ts';
export { GenerationChannel } from './generation/generation-channel.ts';
export { PROTOCOL_VERSION } from './wire/protocol.ts';
export { prometheusText } from './internal/prometheus.ts';
export type { MetricFamily, MetricSample } from './internal/prometheus.ts';
export type { Health } from './triggers/probes.ts';
export type { ProbesOption } from './triggers/probes-config.ts';
export type { HealthCheck } from './lifecycle/health.ts';
