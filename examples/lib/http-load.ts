/**
 * An HTTP load generator that never retries and counts every failure by kind.
 * Used by the demo, the HTTP tests and bench/. Load tools such as autocannon
 * reconnect and resend silently after a `Connection: close`, which hides exactly
 * the failures we care about, so this one is hand-rolled on node:http:
 *
 * - keep-alive clients: one Agent each (keepAlive, one socket), request after
 *   request on the same connection until the server closes it, then a new one;
 * - fresh clients: a new connection per request (agent: false, Connection: close).
 *
 * Every request is bounded by a timeout; the whole run by `durationMs` and
 * `maxRequests`. Only loopback targets are expected.
 */
import { Agent, request, type IncomingMessage } from 'node:http';

/**
 * refused: the connection was never established; reset: an established
 * connection was reset; hangup: a request was written and the connection closed
 * without a response; timeout: no response in time; status: not 2xx.
 */
export type FailureKind = 'refused' | 'reset' | 'hangup' | 'timeout' | 'status' | 'other';
export const FAILURE_KINDS: FailureKind[] = ['refused', 'reset', 'hangup', 'timeout', 'status', 'other'];

export interface LoadOptions {
  port: number;
  host?: string;
  path?: string;
  /** Clients that reuse one connection. Default 4. */
  keepAliveClients?: number;
  /** Clients that open a new connection per request. Default 2. */
  freshClients?: number;
  /** Per-request timeout in ms. Default 10000. */
  timeoutMs?: number;
  /** Hard bound on the run. Default 120000. */
  durationMs?: number;
  /** Hard bound on requests (all clients). Default 5,000,000. */
  maxRequests?: number;
  /**
   * Keep per-request samples (time, latency) for latency analysis. Default true.
   * 'failures' keeps only failed requests (at most MAX_FAILURE_SAMPLES), so a run
   * of an hour can still say when each failure happened without a report of
   * millions of samples.
   */
  samples?: boolean | 'failures';
}

/** One request: start time (epoch ms), latency (ms), failure kind or '' for success. */
export type Sample = [startedAt: number, latencyMs: number, failure: FailureKind | ''];

/** Bound on the failed-request samples kept with `samples: 'failures'`. */
export const MAX_FAILURE_SAMPLES = 100_000;

export interface LoadReport {
  requests: number;
  ok: number;
  failures: Record<FailureKind, number>;
  /** The first few failures, described. */
  errors: string[];
  /** Distinct `x-generation` response header values seen. */
  generations: string[];
  /** With workers: answers per "<x-generation>/<x-worker>" (servers that send `x-worker`). */
  workers?: Record<string, number>;
  connectionsOpened: number;
  startedAt: number;
  endedAt: number;
  samples: Sample[];
  /** HTTP/2 (http2-load.ts): streams refused unprocessed (REFUSED_STREAM) and sent once more. */
  resentUnprocessed?: number;
}

/** A report with nothing counted yet (every load generator starts from one). */
/**
 * What the HTTP/2 and gRPC loads share: their report, the generations that
 * answered, their bounds (time, requests) and their clients, started together
 * and awaited at stop().
 */
export class LoadRun<R extends LoadReport> {
  readonly report: R;
  readonly generations = new Set<string>();
  readonly #bounds: { durationMs: number; maxRequests: number };
  readonly #clients: Promise<void>[] = [];
  #running = false;
  #deadline = 0;

  constructor(report: R, bounds: { durationMs: number; maxRequests: number }) {
    this.report = report;
    this.#bounds = bounds;
  }

  start(clients: number, client: () => Promise<void>): void {
    this.#running = true;
    this.report.startedAt = Date.now();
    this.#deadline = this.report.startedAt + this.#bounds.durationMs;
    for (let i = 0; i < clients; i++) this.#clients.push(client());
  }

  /** With workers: one more answer from "<generation>/<worker index>". */
  answeredBy(key: string): void {
    const workers = (this.report.workers ??= {});
    workers[key] = (workers[key] ?? 0) + 1;
  }

  /** Whether a client may send one more request. */
  more(): boolean {
    return this.#running && Date.now() < this.#deadline && this.report.requests < this.#bounds.maxRequests;
  }

  async stop(): Promise<R> {
    this.#running = false;
    await Promise.all(this.#clients);
    this.report.endedAt = Date.now();
    this.report.generations = [...this.generations];
    return this.report;
  }
}

export function emptyLoadReport(): LoadReport {
  return {
    requests: 0,
    ok: 0,
    failures: { refused: 0, reset: 0, hangup: 0, timeout: 0, status: 0, other: 0 },
    errors: [],
    generations: [],
    connectionsOpened: 0,
    startedAt: 0,
    endedAt: 0,
    samples: [],
  };
}

export function classify(err: NodeJS.ErrnoException & { kind?: FailureKind }): FailureKind {
  if (err.kind) return err.kind;
  // Never connected, so no request was sent: ECONNREFUSED, or a reset while
  // connecting (the handshake finished in the kernel's accept queue of a
  // socket that then closed).
  if (err.code === 'ECONNREFUSED' || err.syscall === 'connect') return 'refused';
  // Node's wording when a request was written and the connection closed without a response.
  if (err.message === 'socket hang up') return 'hangup';
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return 'reset';
  return 'other';
}

export class HttpLoad {
  readonly #options: Required<LoadOptions>;
  readonly #report: LoadReport;
  readonly #generations = new Set<string>();
  #running = false;
  #loops: Promise<void>[] = [];
  #deadline = 0;

  constructor(options: LoadOptions) {
    this.#options = {
      host: '127.0.0.1',
      path: '/',
      keepAliveClients: 4,
      freshClients: 2,
      timeoutMs: 10_000,
      durationMs: 120_000,
      maxRequests: 5_000_000,
      samples: true,
      ...options,
    };
    this.#report = emptyLoadReport();
  }

  start(): this {
    this.#running = true;
    this.#report.startedAt = Date.now();
    this.#deadline = this.#report.startedAt + this.#options.durationMs;
    for (let i = 0; i < this.#options.keepAliveClients; i++) this.#loops.push(this.#keepAliveLoop());
    for (let i = 0; i < this.#options.freshClients; i++) this.#loops.push(this.#freshLoop());
    return this;
  }

  /** A live view of the counters (samples excluded). */
  get progress(): Omit<LoadReport, 'samples'> {
    const { samples: _samples, ...rest } = this.#report;
    return { ...rest, generations: [...this.#generations] };
  }

  async stop(): Promise<LoadReport> {
    this.#running = false;
    await Promise.all(this.#loops);
    this.#report.endedAt = Date.now();
    this.#report.generations = [...this.#generations];
    return this.#report;
  }

  #more(): boolean {
    return this.#running && Date.now() < this.#deadline && this.#report.requests < this.#options.maxRequests;
  }

  async #keepAliveLoop(): Promise<void> {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    agent.on('free', () => {});
    try {
      while (this.#more()) await this.#one(agent);
    } finally {
      agent.destroy();
    }
  }

  async #freshLoop(): Promise<void> {
    while (this.#more()) await this.#one(false);
  }

  #one(agent: Agent | false): Promise<void> {
    const report = this.#report;
    report.requests++;
    const startedAt = Date.now();
    const t0 = performance.now();
    return new Promise<void>((resolve) => {
      let done = false;
      const finish = (failure: FailureKind | '', detail?: string) => {
        if (done) return;
        done = true;
        if (failure === '') report.ok++;
        else {
          report.failures[failure]++;
          if (report.errors.length < 50) report.errors.push(`${new Date(startedAt).toISOString()} ${failure}: ${detail}`);
        }
        const keep = this.#options.samples;
        if (keep === true || (keep === 'failures' && failure !== '' && report.samples.length < MAX_FAILURE_SAMPLES)) {
          report.samples.push([startedAt, performance.now() - t0, failure]);
        }
        resolve();
      };
      const req = request(
        {
          host: this.#options.host,
          port: this.#options.port,
          path: this.#options.path,
          agent,
          headers: agent === false ? { connection: 'close' } : {},
        },
        (res: IncomingMessage) => {
          const generation = res.headers['x-generation'];
          if (typeof generation === 'string') this.#generations.add(generation);
          const worker = res.headers['x-worker'];
          if (typeof worker === 'string') {
            const workers = (this.#report.workers ??= {});
            const key = `${String(generation)}/${worker}`;
            workers[key] = (workers[key] ?? 0) + 1;
          }
          res.on('data', () => {});
          res.on('error', (err: NodeJS.ErrnoException) => finish(classify(err), err.message));
          res.on('end', () => {
            if (res.statusCode !== undefined && res.statusCode >= 200 && res.statusCode < 300) finish('');
            else finish('status', `HTTP ${res.statusCode}`);
          });
        },
      );
      req.on('socket', (socket) => {
        if (!(socket as unknown as { [reused]?: boolean })[reused]) {
          (socket as unknown as { [reused]?: boolean })[reused] = true;
          report.connectionsOpened++;
        }
      });
      req.setTimeout(this.#options.timeoutMs, () => {
        req.destroy(Object.assign(new Error(`no response within ${this.#options.timeoutMs} ms`), { kind: 'timeout' as const }));
      });
      req.on('error', (err: NodeJS.ErrnoException) => finish(classify(err), `${err.code ?? ''} ${err.message}`));
      req.end();
    });
  }
}

const reused = Symbol('counted');

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[percentileIndex(sorted.length, p)]!;
}

/** Where the p-th percentile of `length` sorted values is (nearest rank). */
export function percentileIndex(length: number, p: number): number {
  return Math.min(length - 1, Math.max(0, Math.ceil((p / 100) * length) - 1));
}

export function totalFailures(report: Pick<LoadReport, 'failures'>): number {
  return FAILURE_KINDS.reduce((sum, kind) => sum + report.failures[kind], 0);
}

/** Latencies of successful requests that overlap the windows / do not (sorted), and how many failed requests did each. */
export function latencySplit(samples: Sample[], windows: [number, number][]): { inside: number[]; outside: number[]; failedInside: number; failedOutside: number } {
  const inside: number[] = [];
  const outside: number[] = [];
  let failedInside = 0;
  let failedOutside = 0;
  for (const [at, latency, failure] of samples) {
    const end = at + latency;
    const within = windows.some(([a, b]) => end >= a && at <= b);
    if (failure !== '') {
      if (within) failedInside++;
      else failedOutside++;
    } else (within ? inside : outside).push(latency);
  }
  inside.sort((a, b) => a - b);
  outside.sort((a, b) => a - b);
  return { inside, outside, failedInside, failedOutside };
}
