/**
 * A gRPC load generator (@grpc/grpc-js) for examples/grpc-server.ts, in the
 * report shape of http-load.ts (a "request" is a call). Retries are disabled
 * unless `retries` is true (`grpc.enable_retries: 0` turns off gRPC's
 * transparent retry of calls the server never processed too): every call that
 * does not succeed is counted; those refused unprocessed (REFUSED_STREAM,
 * grpc-js says "Stream refused by server") also in `refusedUnprocessed`. Each client is a channel (and a connection) of its own
 * making calls one after another; every `streamEvery`-th call is a server
 * stream of `streamCount` messages `streamIntervalMs` apart, which must arrive
 * complete, in order, from one generation (and one worker of it). Bounded by `durationMs`,
 * `maxRequests` and a per-call deadline.
 */
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { LoadRun, emptyLoadReport, type FailureKind, type LoadReport } from './http-load.ts';

export interface GrpcLoadOptions {
  port: number;
  /** grpc-js's default (transparent retries of unprocessed calls on). Default false: disabled. */
  retries?: boolean;
  host?: string;
  /** Channels, each with one call at a time. Default 8. */
  clients?: number;
  /** Every n-th call is a server stream. Default 4. */
  streamEvery?: number;
  streamCount?: number;
  streamIntervalMs?: number;
  timeoutMs?: number;
  durationMs?: number;
  maxRequests?: number;
}

interface EchoReply {
  text: string;
  generation: number;
  index: number;
  /** The worker that answered (a service with workers), else ''. */
  worker: string;
}

type EchoClient = grpc.Client & {
  Unary(request: object, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, reply?: EchoReply) => void): grpc.ClientUnaryCall;
  Stream(request: object, options: grpc.CallOptions): grpc.ClientReadableStream<EchoReply>;
};

const proto = grpc.loadPackageDefinition(loadSync(fileURLToPath(new URL('../grpc/echo.proto', import.meta.url)))) as unknown as {
  echo: { Echo: new (address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions) => EchoClient };
};

export class GrpcLoad {
  readonly #options: Required<GrpcLoadOptions>;
  readonly #run: LoadRun<LoadReport & { refusedUnprocessed: number }>;

  constructor(options: GrpcLoadOptions) {
    this.#options = { host: '127.0.0.1', retries: false, clients: 8, streamEvery: 4, streamCount: 5, streamIntervalMs: 100, timeoutMs: 10_000, durationMs: 120_000, maxRequests: 5_000_000, ...options };
    this.#run = new LoadRun({ ...emptyLoadReport(), refusedUnprocessed: 0 }, this.#options);
  }

  start(): this {
    this.#run.start(this.#options.clients, () => this.#client());
    return this;
  }

  stop(): Promise<LoadReport & { refusedUnprocessed: number }> {
    return this.#run.stop();
  }

  async #client(): Promise<void> {
    // A subchannel pool of its own: grpc-js otherwise shares one connection between every
    // channel of a process with the same target and options (16 clients, one connection).
    const options: grpc.ChannelOptions = { 'grpc.use_local_subchannel_pool': 1, ...(this.#options.retries ? {} : { 'grpc.enable_retries': 0 }) };
    const client = new proto.echo.Echo(`${this.#options.host}:${this.#options.port}`, grpc.credentials.createInsecure(), options);
    this.#run.report.connectionsOpened++;
    while (this.#run.more()) {
      const n = ++this.#run.report.requests;
      const failure = await (n % this.#options.streamEvery === 0 ? this.#stream(client) : this.#unary(client));
      if (failure === undefined) this.#run.report.ok++;
      else {
        this.#run.report.failures[failure.kind]++;
        if (failure.unprocessed) this.#run.report.refusedUnprocessed++;
        if (this.#run.report.errors.length < 50) this.#run.report.errors.push(`${new Date().toISOString()} ${failure.kind}: ${failure.detail}`);
      }
    }
    client.close();
  }

  #deadlineOption(): grpc.CallOptions {
    return { deadline: Date.now() + this.#options.timeoutMs };
  }

  #unary(client: EchoClient): Promise<Failure | undefined> {
    return new Promise((resolve) => {
      client.Unary({ text: 'ping' }, this.#deadlineOption(), (err, reply) => {
        if (err) return resolve(failureOf(err));
        this.#run.generations.add(String(reply!.generation));
        if (reply!.worker !== '') this.#run.answeredBy(`${reply!.generation}/${reply!.worker}`);
        resolve(reply!.text === 'ping' ? undefined : { kind: 'other', detail: `wrong answer ${JSON.stringify(reply)}` });
      });
    });
  }

  #stream(client: EchoClient): Promise<Failure | undefined> {
    const { streamCount: count, streamIntervalMs: interval } = this.#options;
    return new Promise((resolve) => {
      const replies: EchoReply[] = [];
      const call = client.Stream({ text: 'stream', count, interval_ms: interval }, this.#deadlineOption());
      call.on('data', (reply: EchoReply) => replies.push(reply));
      call.on('error', (err: grpc.ServiceError) => resolve(failureOf(err, replies.length)));
      call.on('end', () => {
        const generation = replies[0]?.generation;
        if (generation !== undefined) this.#run.generations.add(String(generation));
        if (generation !== undefined && replies[0]!.worker !== '') this.#run.answeredBy(`${generation}/${replies[0]!.worker}`);
        const complete = replies.length === count && replies.every((reply, i) => reply.index === i && reply.generation === generation && reply.worker === replies[0]!.worker);
        resolve(complete ? undefined : { kind: 'other', detail: `stream incomplete: ${JSON.stringify(replies.map((r) => [r.generation, r.index]))}` });
      });
    });
  }
}

type Failure = { kind: FailureKind; detail: string; unprocessed?: boolean };

function failureOf(err: grpc.ServiceError, received = 0): Failure {
  const kind: FailureKind = err.code === grpc.status.DEADLINE_EXCEEDED ? 'timeout' : err.code === grpc.status.UNAVAILABLE ? 'reset' : 'other';
  // grpc-js's words for a stream refused with REFUSED_STREAM (the server never processed it):
  // "Stream refused by server", or on Node 24 also "Write error: Stream closed with error code NGHTTP2_REFUSED_STREAM".
  const unprocessed = err.code === grpc.status.UNAVAILABLE && received === 0 && /Stream refused by server|NGHTTP2_REFUSED_STREAM/.test(err.details);
  return { kind, detail: `${grpc.status[err.code]} ${err.details} (after ${received} messages)`, unprocessed };
}
