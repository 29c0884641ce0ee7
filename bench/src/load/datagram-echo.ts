/**
 * The two echo loads of the datagrams section, each run in a process of its
 * own (optionally pinned to a CPU) through tool-process.ts.
 */
import { runToolProcess } from './tool-process.ts';

export interface UdpEchoOptions {
  port: number;
  /** Client sockets, each bound to a port of its own. */
  clients: number;
  /** Requests each client keeps outstanding. */
  window: number;
  /** Request size, bytes (at least 4: the request id). */
  size: number;
  /** Sending stops after this long; then outstanding answers are awaited (up to lossTimeoutMs). */
  durationMs: number;
  /** A request unanswered for this long counts as lost, and its slot in the window is reused. */
  lossTimeoutMs: number;
}

export interface UdpEchoResult {
  sent: number;
  /** Answers to requests not (yet) counted as lost, in the whole run. */
  answered: number;
  /** Of those, answers received before sending stopped: perSecond counts these. */
  answeredInWindow: number;
  lost: number;
  /** Answers that came after their request had been counted as lost. */
  late: number;
  /** Answers the client cannot match to a request (wrong size, unknown id). */
  invalid: number;
  /** Socket errors (ECONNREFUSED when nothing listens on the port). */
  errors: number;
  /** Length of the sending window, ms. */
  elapsedMs: number;
  perSecond: number;
  /** CPU time of the load process over wall time: near 1 means the client, not the server, was the limit. */
  clientCpu: number;
}

export type EchoTransport = 'seqpacket' | 'stream';

export interface MessageEchoOptions {
  /** The server's Unix socket. */
  path: string;
  /** 'seqpacket': one message per packet; 'stream': 4-byte big-endian length, then the payload. */
  transport: EchoTransport;
  connections: number;
  /** Messages each connection keeps in flight. */
  window: number;
  /** Message size, bytes (payload; the stream framing adds 4). */
  size: number;
  durationMs: number;
  /** Bound on waiting for the last echoes once sending stopped. */
  settleMs: number;
}

export interface MessageEchoResult {
  sent: number;
  /** Echoes received, in the whole run. */
  echoed: number;
  /** Echoes received before sending stopped: perSecond counts these. */
  echoedInWindow: number;
  /** Messages whose echo never came (connection errors, the settle bound). */
  missing: number;
  /** Echoes of the wrong size, and connection errors. */
  errors: number;
  elapsedMs: number;
  perSecond: number;
  clientCpu: number;
}

export function udpEcho(options: UdpEchoOptions, cpu?: number): Promise<UdpEchoResult> {
  return runToolProcess<UdpEchoResult>('./udp-echo-process.ts', options, cpu);
}

export function messageEcho(options: MessageEchoOptions, cpu?: number): Promise<MessageEchoResult> {
  return runToolProcess<MessageEchoResult>('./message-echo-process.ts', options, cpu);
}
