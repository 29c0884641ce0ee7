/**
 * Datagrams and seqpacket: what reading and answering messages through
 * ecdysis costs, next to plain Node doing the same.
 *
 * UDP: three echo servers, each in its own process,
 *   (a) ecdysis listenUdp, for await (const msg of udp) await msg.reply(msg.data),
 *   (b) ecdysis listenUdp, udp.messages().subscribe((msg) => msg.reply(msg.data)),
 *   (c) a plain dgram socket, socket.send(data, port, address) (the baseline),
 * driven by the same windowed load (load/udp-echo-process.ts), A/B interleaved
 * as in steady-state.ts: every round measures every variant in a rotated
 * order, and (a) and (b) are reported as ratios to (c) in the same round.
 *
 * Unix seqpacket: an ecdysis listenUnixSeqpacket echo (for await (const m of
 * conn) await conn.send(m)), and for comparison a node:net Unix *stream* echo
 * of length-prefixed frames (Node has no seqpacket sockets, so there is no
 * plain-Node seqpacket baseline), per message size, interleaved the same way.
 *
 * Servers share one CPU, each load process gets the other (taskset). Next to
 * the rate, the server's own CPU time per message (from /proc): when the load
 * process is the limit, rates flatten towards each other, CPU per message does not.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { APPS, launchApp } from './apps.ts';
import { stopChild } from './lib/children.ts';
import { LifecycleLog } from './lib/lifecycle-log.ts';
import { cpuTimeMs } from './lib/proc.ts';
import { spread, type Spread } from './lib/stats.ts';
import { messageEcho, udpEcho, type EchoTransport, type MessageEchoResult, type UdpEchoResult } from './load/datagram-echo.ts';

export interface DatagramsOptions {
  rounds: number;
  /** Length of one measurement (sending time; the last answers are awaited after it). */
  durationMs: number;
  udp: {
    /** Client sockets of the load process. */
    clients: number;
    /** Requests each client keeps outstanding: clients × window stays well inside the server's default receive buffer. */
    window: number;
    /** Request (and answer) size, bytes. */
    size: number;
    /** A request unanswered for this long counts as lost. */
    lossTimeoutMs: number;
  };
  seqpacket: {
    connections: number;
    /** Messages each connection keeps in flight. */
    window: number;
    /** Message sizes, bytes: each is its own row. */
    sizes: number[];
  };
  serverCpu: number;
  clientCpu: number;
  tmpDir: string;
}

interface UdpVariant {
  id: 'iterator' | 'observable' | 'plain';
  label: string;
  script: string;
  env: Record<string, string>;
}

export const UDP_VARIANTS: UdpVariant[] = [
  { id: 'iterator', label: '(a) ecdysis, `for await (msg of udp) await msg.reply()`', script: APPS.ecdysisUdp, env: { CONSUME: 'iterator' } },
  { id: 'observable', label: '(b) ecdysis, `udp.messages().subscribe(msg => msg.reply())`', script: APPS.ecdysisUdp, env: { CONSUME: 'observable' } },
  { id: 'plain', label: '(c) plain `dgram` socket, `socket.send()`', script: APPS.plainUdp, env: {} },
];
const UDP_BASELINE: UdpVariant['id'] = 'plain';

interface EchoServer {
  transport: EchoTransport;
  label: string;
  script: string;
}

export const ECHO_SERVERS: EchoServer[] = [
  { transport: 'seqpacket', label: 'ecdysis `listenUnixSeqpacket`, `for await (m of conn) await conn.send(m)`', script: APPS.ecdysisSeqpacket },
  { transport: 'stream', label: 'comparison: `node:net` Unix stream, 4-byte length + payload frames (no ecdysis)', script: APPS.plainUnixStream },
];
const ECHO_BASELINE: EchoTransport = 'stream';

/** What the rows of both tables share. */
export interface MessageRate {
  /** Answers (UDP) or echoes (seqpacket, stream) per second while sending. */
  perSecond: Spread;
  /** Ratio of perSecond to the baseline's in the same round. */
  ratio: Spread;
  /** Server CPU time (user + system) per answered message, µs. */
  serverCpuUs: Spread;
  /** Ratio of serverCpuUs to the baseline's in the same round. */
  cpuRatio: Spread;
  /** Server CPU busy fraction during the measurements (median). */
  serverBusy: number;
  /** Load process CPU busy fraction (median): near 1 means the client was the limit. */
  clientBusy: number;
}

export interface UdpVariantResult extends MessageRate {
  id: UdpVariant['id'];
  label: string;
  /** Totals over the recorded rounds. */
  sent: number;
  answered: number;
  lost: number;
  late: number;
  invalid: number;
  errors: number;
}

export interface EchoRowResult extends MessageRate {
  transport: EchoTransport;
  label: string;
  size: number;
  /** Totals over the recorded rounds. */
  sent: number;
  echoed: number;
  missing: number;
  errors: number;
}

export interface DatagramsResult {
  options: Omit<DatagramsOptions, 'tmpDir'>;
  udp: UdpVariantResult[];
  echo: EchoRowResult[];
}

interface Sample {
  perSecond: number;
  /** Messages answered in the whole measurement (the divisor of CPU per message). */
  messages: number;
  elapsedMs: number;
  clientCpu: number;
  serverCpuMs: number;
}

interface Server {
  child: ChildProcess;
  pid: number;
}

export async function measureDatagrams(options: DatagramsOptions): Promise<DatagramsResult> {
  const { tmpDir: _tmp, ...reported } = options;
  return { options: reported, udp: await measureUdp(options), echo: await measureEcho(options) };
}

async function measureUdp(options: DatagramsOptions): Promise<UdpVariantResult[]> {
  const log = new LifecycleLog(join(options.tmpDir, 'datagrams-udp.jsonl'));
  const raw = new Map<string, UdpEchoResult[]>(UDP_VARIANTS.map((v) => [v.id, []]));
  const samples = new Map<string, Sample[]>(UDP_VARIANTS.map((v) => [v.id, []]));
  const servers: (Server & { variant: UdpVariant })[] = [];
  try {
    for (const variant of UDP_VARIANTS) {
      const child = launchApp({ script: variant.script, log, cpu: options.serverCpu, env: variant.env });
      servers.push({ variant, child, pid: child.pid! });
    }
    await log.waitForServing(servers.length, 15_000);
    const records = await log.recordsAsync();
    const ports = new Map(servers.map((s) => [s.pid, records.find((r) => r.pid === s.pid && r.event === 'serving')!.port as number]));
    const measure = async (server: (typeof servers)[number], durationMs: number) => {
      const cpuBefore = cpuTimeMs(server.pid);
      const result = await udpEcho({ port: ports.get(server.pid)!, ...options.udp, durationMs }, options.clientCpu);
      const sample: Sample = { perSecond: result.perSecond, messages: result.answered, elapsedMs: result.elapsedMs, clientCpu: result.clientCpu, serverCpuMs: cpuTimeMs(server.pid) - cpuBefore };
      return { result, sample };
    };
    // Warm-up (JIT, socket buffers), not recorded.
    for (const server of servers) await measure(server, 500);
    for (let round = 0; round < options.rounds; round++) {
      for (const server of rotate(servers, round)) {
        const { result, sample } = await measure(server, options.durationMs);
        raw.get(server.variant.id)!.push(result);
        samples.get(server.variant.id)!.push(sample);
      }
    }
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
  }
  return UDP_VARIANTS.map((v) => {
    const results = raw.get(v.id)!;
    const total = (key: 'sent' | 'answered' | 'lost' | 'late' | 'invalid' | 'errors') => results.reduce((n, r) => n + r[key], 0);
    return {
      id: v.id,
      label: v.label,
      ...rate(samples.get(v.id)!, samples.get(UDP_BASELINE)!),
      sent: total('sent'),
      answered: total('answered'),
      lost: total('lost'),
      late: total('late'),
      invalid: total('invalid'),
      errors: total('errors'),
    };
  });
}

async function measureEcho(options: DatagramsOptions): Promise<EchoRowResult[]> {
  const log = new LifecycleLog(join(options.tmpDir, 'datagrams-seqpacket.jsonl'));
  // Not under tmpDir: a Unix socket path must fit in sun_path (108 bytes), wherever the repository is.
  const socketDir = mkdtempSync(join(tmpdir(), 'ecdysis-bench-'));
  const key = (transport: EchoTransport, size: number) => `${transport}/${size}`;
  const rows = options.seqpacket.sizes.flatMap((size) => ECHO_SERVERS.map((server) => ({ server, size })));
  const raw = new Map<string, MessageEchoResult[]>(rows.map((r) => [key(r.server.transport, r.size), []]));
  const samples = new Map<string, Sample[]>(rows.map((r) => [key(r.server.transport, r.size), []]));
  const servers: (Server & { echo: EchoServer; path: string })[] = [];
  try {
    for (const echo of ECHO_SERVERS) {
      const path = join(socketDir, `${echo.transport}.sock`);
      const child = launchApp({ script: echo.script, log, cpu: options.serverCpu, env: { SOCKET_PATH: path } });
      servers.push({ echo, path, child, pid: child.pid! });
    }
    await log.waitForServing(servers.length, 15_000);
    const measure = async (server: (typeof servers)[number], size: number, durationMs: number) => {
      const cpuBefore = cpuTimeMs(server.pid);
      const { connections, window } = options.seqpacket;
      const result = await messageEcho({ path: server.path, transport: server.echo.transport, connections, window, size, durationMs, settleMs: 1_000 }, options.clientCpu);
      const sample: Sample = { perSecond: result.perSecond, messages: result.echoed, elapsedMs: result.elapsedMs, clientCpu: result.clientCpu, serverCpuMs: cpuTimeMs(server.pid) - cpuBefore };
      return { result, sample };
    };
    for (const server of servers) await measure(server, options.seqpacket.sizes[0]!, 500);
    for (let round = 0; round < options.rounds; round++) {
      for (const size of options.seqpacket.sizes) {
        for (const server of rotate(servers, round)) {
          const { result, sample } = await measure(server, size, options.durationMs);
          raw.get(key(server.echo.transport, size))!.push(result);
          samples.get(key(server.echo.transport, size))!.push(sample);
        }
      }
    }
  } finally {
    await Promise.all(servers.map(({ child }) => stopChild(child)));
    log.killAll();
    rmSync(socketDir, { recursive: true, force: true });
  }
  return rows.map(({ server, size }) => {
    const results = raw.get(key(server.transport, size))!;
    const total = (k: 'sent' | 'echoed' | 'missing' | 'errors') => results.reduce((n, r) => n + r[k], 0);
    return {
      transport: server.transport,
      label: server.label,
      size,
      ...rate(samples.get(key(server.transport, size))!, samples.get(key(ECHO_BASELINE, size))!),
      sent: total('sent'),
      echoed: total('echoed'),
      missing: total('missing'),
      errors: total('errors'),
    };
  });
}

/** The round's order: every variant goes first in turn. */
function rotate<T>(items: T[], round: number): T[] {
  return items.map((_, i) => items[(i + round) % items.length]!);
}

/** Medians and spreads of one row's samples, with ratios to the baseline's samples of the same rounds. */
function rate(own: Sample[], base: Sample[]): MessageRate {
  const cpuUs = (s: Sample) => (s.serverCpuMs * 1000) / s.messages;
  return {
    perSecond: spread(own.map((s) => s.perSecond)),
    ratio: spread(own.map((s, round) => s.perSecond / base[round]!.perSecond)),
    serverCpuUs: spread(own.map(cpuUs)),
    cpuRatio: spread(own.map((s, round) => cpuUs(s) / cpuUs(base[round]!))),
    serverBusy: spread(own.map((s) => s.serverCpuMs / s.elapsedMs)).median,
    clientBusy: spread(own.map((s) => s.clientCpu)).median,
  };
}
