/**
 * WebSocket clients for examples/websocket.ts that never lose track of a
 * message: each numbers its messages, keeps up to `window` unacknowledged, and
 * checks that acknowledgements come in order, once each. A close with 1001
 * (going away) is the service's upgrade: the client reconnects at once and
 * sends again, in order, what was not acknowledged (the service handled none
 * of it); once stopped, it still does so until everything it sent is
 * acknowledged, then closes with 1000. Any other close, an error, an acknowledgement out of order or twice
 * is a failure. Bounded by `durationMs`.
 */
import WebSocket from 'ws';

export interface WsLoadOptions {
  port: number;
  host?: string;
  /** Clients. Default 100. */
  clients?: number;
  /** Unacknowledged messages each client keeps in flight. Default 4. */
  window?: number;
  durationMs?: number;
}

export interface WsLoadReport {
  clients: number;
  /** Distinct messages the clients sent (each numbered once, whatever the number of times it was sent). */
  sent: number;
  /** Messages acknowledged, all clients. */
  acknowledged: number;
  /** Messages sent again after a 1001 (not acknowledged on the closed connection). */
  resent: number;
  connections: number;
  /** Closes seen, by code. */
  closes: Record<string, number>;
  failures: string[];
  generations: string[];
  /** With workers: acknowledgements per "<gen>/<worker>" (a service whose acknowledgements say `worker`). */
  workers?: Record<string, number>;
}

export class WsLoad {
  readonly #options: Required<WsLoadOptions>;
  readonly #report: WsLoadReport = { clients: 0, sent: 0, acknowledged: 0, resent: 0, connections: 0, closes: {}, failures: [], generations: [] };
  readonly #generations = new Set<string>();
  #running = false;
  #clients: Promise<void>[] = [];
  /** Each open connection's way to finish once its messages are acknowledged. */
  readonly #finishers = new Set<() => void>();

  constructor(options: WsLoadOptions) {
    this.#options = { host: '127.0.0.1', clients: 100, window: 4, durationMs: 120_000, ...options };
  }

  start(): this {
    this.#running = true;
    const deadline = Date.now() + this.#options.durationMs;
    for (let i = 0; i < this.#options.clients; i++) this.#clients.push(this.#client(i, deadline));
    this.#report.clients = this.#options.clients;
    return this;
  }

  async stop(): Promise<WsLoadReport> {
    this.#running = false;
    for (const finish of this.#finishers) finish();
    await Promise.all(this.#clients);
    this.#report.generations = [...this.#generations];
    return this.#report;
  }

  #fail(message: string): void {
    if (this.#report.failures.length < 50) this.#report.failures.push(`${new Date().toISOString()} ${message}`);
    else this.#report.failures[49] = `... and more (the last: ${message})`;
  }

  /** One client: connections one after another until stopped; the numbering runs across them. */
  async #client(id: number, deadline: number): Promise<void> {
    let nextSeq = 1;
    let nextAck = 1;
    const unacked: number[] = [];
    // Until stopped, and after that until what was sent is acknowledged (a 1001 at the end included).
    while ((this.#running || unacked.length > 0) && Date.now() < deadline) {
      const again = unacked.length;
      const outcome = await new Promise<'going-away' | 'failed' | 'stopped'>((resolve) => {
        const ws = new WebSocket(`ws://${this.#options.host}:${this.#options.port}/`);
        this.#report.connections++;
        let settled = false;
        const settle = (value: 'going-away' | 'failed' | 'stopped') => {
          if (!settled) {
            settled = true;
            resolve(value);
          }
        };
        const fill = () => {
          while (this.#running && Date.now() < deadline && unacked.length < this.#options.window && ws.readyState === WebSocket.OPEN) {
            unacked.push(nextSeq);
            this.#report.sent++;
            ws.send(JSON.stringify({ seq: nextSeq++, text: `client ${id}` }));
          }
          if ((!this.#running || Date.now() >= deadline) && unacked.length === 0 && ws.readyState === WebSocket.OPEN) ws.close(1000, 'done');
        };
        this.#finishers.add(fill);
        ws.on('open', () => {
          // What the last connection left unacknowledged goes first, in order.
          for (const seq of unacked) ws.send(JSON.stringify({ seq, text: `client ${id}` }));
          this.#report.resent += again;
          fill();
        });
        ws.on('message', (data) => {
          const { ack, gen, worker } = JSON.parse(data.toString()) as { ack: number; gen: number; worker?: number };
          this.#generations.add(String(gen));
          if (worker !== undefined) {
            const workers = (this.#report.workers ??= {});
            workers[`${gen}/${worker}`] = (workers[`${gen}/${worker}`] ?? 0) + 1;
          }
          if (ack !== nextAck || unacked[0] !== ack) {
            this.#fail(`client ${id}: ack ${ack}, expected ${nextAck}`);
            ws.terminate();
            return settle('failed');
          }
          unacked.shift();
          nextAck++;
          this.#report.acknowledged++;
          fill();
        });
        ws.on('error', (err) => {
          this.#fail(`client ${id}: ${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`);
          settle('failed');
        });
        ws.on('close', (code) => {
          this.#finishers.delete(fill);
          this.#report.closes[code] = (this.#report.closes[code] ?? 0) + 1;
          if (code === 1001) return settle('going-away');
          if (code === 1000 && !this.#running) return settle('stopped');
          if (code === 1000 && Date.now() >= deadline) return settle('stopped');
          this.#fail(`client ${id}: closed with ${code}`);
          settle('failed');
        });
      });
      if (outcome !== 'going-away') break;
    }
  }
}
