/**
 * An HTTP/2 load generator that never retries a stream and counts every failure
 * by kind, in the report shape of http-load.ts (a "request" is a stream).
 *
 * Each client keeps one session and `streamsPerSession` streams in flight on
 * it, as a browser or a gRPC channel does. A session the server sends GOAWAY on
 * takes no new stream: the client opens a new session for the next ones, and
 * the streams already open finish where they are. A stream that fails (reset,
 * the session gone, no response) is counted, never sent again, with one
 * exception that RFC 9113 (§8.7) makes: a stream refused with REFUSED_STREAM
 * before any response was not processed by the server, and a client may send
 * it again. Node's own client refuses, by itself, a stream it had queued but
 * not yet written when a GOAWAY arrives in the same read as the response that
 * made the load ask for it: those are sent once more on a new session and
 * counted in `resentUnprocessed` (browsers, curl and gRPC's transparent retry
 * do the same); a second refusal is a failure. Every fifth stream
 * asks for `slowPath` (a long one) when given. Bounded by `durationMs`,
 * `maxRequests` and a per-stream timeout.
 */
import { connect, constants, type ClientHttp2Session } from 'node:http2';
import { LoadRun, emptyLoadReport, type FailureKind, type LoadReport } from './http-load.ts';

export interface Http2LoadOptions {
  port: number;
  host?: string;
  path?: string;
  /** Asked for by every fifth stream, e.g. '/slow?ms=500'. Default: none. */
  slowPath?: string;
  /** Concurrent sessions (clients). Default 4. */
  sessions?: number;
  /** Streams in flight on each session. Default 20. */
  streamsPerSession?: number;
  /** TLS (h2) with this CA, else cleartext (h2c). */
  ca?: string;
  timeoutMs?: number;
  durationMs?: number;
  maxRequests?: number;
}

/** LoadReport, and the streams sent again after a REFUSED_STREAM (not processed, RFC 9113 §8.7). */
export interface Http2LoadReport extends LoadReport {
  resentUnprocessed: number;
}

export class Http2Load {
  readonly #options: Required<Omit<Http2LoadOptions, 'ca' | 'slowPath'>> & Pick<Http2LoadOptions, 'ca' | 'slowPath'>;
  readonly #run: LoadRun<Http2LoadReport>;

  constructor(options: Http2LoadOptions) {
    this.#options = { host: '127.0.0.1', path: '/', sessions: 4, streamsPerSession: 20, timeoutMs: 10_000, durationMs: 120_000, maxRequests: 5_000_000, ...options };
    this.#run = new LoadRun({ ...emptyLoadReport(), resentUnprocessed: 0 }, this.#options);
  }

  start(): this {
    this.#run.start(this.#options.sessions, () => this.#client());
    return this;
  }

  stop(): Promise<Http2LoadReport> {
    return this.#run.stop();
  }

  /** One client: `streamsPerSession` loops sharing a session, replaced when it goes away. */
  async #client(): Promise<void> {
    let session: ClientHttp2Session | undefined;
    const usable = () => {
      if (!session || session.closed || session.destroyed) {
        const authority = `${this.#options.ca ? 'https' : 'http'}://${this.#options.host}:${this.#options.port}`;
        session = connect(authority, this.#options.ca ? { ca: this.#options.ca } : {});
        session.on('error', () => {}); // each stream reports its own failure
        this.#run.report.connectionsOpened++;
        // After a GOAWAY the session takes no new stream: the next ones go on a new session.
        const current = session;
        current.on('goaway', () => {
          if (session === current) session = undefined;
        });
      }
      return session;
    };
    const report = this.#run.report;
    const loops: Promise<void>[] = [];
    for (let i = 0; i < this.#options.streamsPerSession; i++) {
      loops.push(
        (async () => {
          while (this.#run.more()) {
            report.requests++;
            await this.#one(usable, false);
          }
        })(),
      );
    }
    await Promise.all(loops);
    // Close the last session only once its streams are done.
    session?.close();
  }

  #one(usable: () => ClientHttp2Session, resend: boolean): Promise<void> {
    const report = this.#run.report;
    const n = report.requests;
    const session = usable();
    const path = this.#options.slowPath && n % 5 === 0 ? this.#options.slowPath : this.#options.path;
    return new Promise<void>((resolve) => {
      let done = false;
      const finish = (failure: FailureKind | '', detail?: string) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (failure !== '' && !resend && status === 0 && stream?.rstCode === constants.NGHTTP2_REFUSED_STREAM) {
          // Not processed by the server (no response, REFUSED_STREAM): sent once more.
          report.resentUnprocessed++;
          void this.#one(usable, true).then(resolve);
          return;
        }
        if (failure === '') report.ok++;
        else {
          report.failures[failure]++;
          if (report.errors.length < 50) report.errors.push(`${new Date().toISOString()} ${failure}: ${detail}`);
        }
        resolve();
      };
      const timer = setTimeout(() => {
        finish('timeout', `no response within ${this.#options.timeoutMs} ms`);
        stream?.close(constants.NGHTTP2_CANCEL);
      }, this.#options.timeoutMs);
      let stream: ReturnType<ClientHttp2Session['request']> | undefined;
      let status = 0;
      try {
        stream = session.request({ ':path': path });
      } catch (err) {
        // The session went away between the check and the request: no stream was sent.
        return finish('refused', (err as Error).message);
      }
      stream.on('response', (headers) => {
        status = Number(headers[':status']);
        const generation = headers['x-generation'];
        if (typeof generation === 'string') this.#run.generations.add(generation);
        const worker = headers['x-worker'];
        if (typeof worker === 'string') this.#run.answeredBy(`${String(generation)}/${worker}`);
      });
      stream.on('data', () => {});
      stream.on('end', () => (status >= 200 && status < 300 ? finish('') : finish('status', `HTTP ${status}`)));
      stream.on('error', (err: NodeJS.ErrnoException) => finish(kindOf(err), `${err.code ?? ''} ${err.message}`));
      stream.on('close', () => {
        // Closed without an end: reset by the server (REFUSED_STREAM after a GOAWAY included).
        if (stream!.rstCode !== undefined && stream!.rstCode !== constants.NGHTTP2_NO_ERROR) finish('reset', `RST_STREAM ${stream!.rstCode}`);
        else finish('hangup', 'the stream closed without a response');
      });
      stream.end();
    });
  }
}

function kindOf(err: NodeJS.ErrnoException): FailureKind {
  // A stream queued on a session whose connection was refused fails with ERR_HTTP2_STREAM_CANCEL, the refusal as its cause.
  if (err.code === 'ECONNREFUSED' || (err.cause as NodeJS.ErrnoException | undefined)?.code === 'ECONNREFUSED') return 'refused';
  if (err.code === 'ERR_HTTP2_STREAM_ERROR' || err.code === 'ECONNRESET' || err.code === 'ERR_HTTP2_SESSION_ERROR') return 'reset';
  if (err.code === 'ERR_HTTP2_GOAWAY_SESSION' || err.code === 'ERR_HTTP2_INVALID_SESSION') return 'refused';
  return 'other';
}
