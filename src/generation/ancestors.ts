/**
 * The older generations that may still drain while this one serves and
 * upgrades (`maxDrainingGenerations` > 1): who they are, this generation's own
 * retire endpoint, and making room for one more when a successor is ready.
 */
import { askAncestor, MAX_DRAINING_CHAIN, RetireEndpoint, type AncestorAnswer, type DrainingAncestor, type RetireHandler } from './retire.ts';

/** How long a status question may take before the ancestor counts as still draining. */
const STATUS_TIMEOUT_MS = 1_000;
/** How long a commit waits for an ancestor told to finish to be drained. */
export const FINISH_TIMEOUT_MS = 5_000;

/** States in which a generation still counts as draining. */
const DRAINING_STATES = new Set(['stopping', 'draining', 'probation']);

export interface Retired {
  ancestor: DrainingAncestor;
  /** It was drained within FINISH_TIMEOUT_MS (false: the commit went ahead without it). */
  drained: boolean;
  elapsedMs: number;
}

export class Ancestors {
  readonly #max: number;
  readonly #generation: number;
  #ancestors: DrainingAncestor[];
  #endpoint: Promise<RetireEndpoint> | undefined;
  #closed = false;

  constructor(max: number, generation: number, inherited: readonly DrainingAncestor[]) {
    this.#max = max;
    this.#generation = generation;
    this.#ancestors = [...inherited].sort((a, b) => a.generation - b.generation);
  }

  /** The older generations this one knows may still drain (oldest first). */
  get known(): readonly DrainingAncestor[] {
    return this.#ancestors;
  }

  /** True when a living parent can be reached: this generation may upgrade while it drains. */
  knows(parentPid: number): boolean {
    return this.#max > 1 && this.#ancestors.some((a) => a.pid === parentPid);
  }

  /**
   * The chain for the next generation's hello: the ancestors still draining,
   * then this generation, once its retire endpoint is open; at most
   * `maxDrainingGenerations` entries (never more than a hello may carry), the
   * newest. Undefined when only one generation may drain.
   *
   * Those left out are the oldest, the ones this commit tells to finish
   * (makeRoom): the child would only ever tell them to finish again. One that
   * does not drain in time ends at its own drain deadline, unknown to the
   * child; one that never answers (hung, or never really there) cannot make
   * the chain grow from upgrade to upgrade until no hello is accepted.
   */
  async chainForChild(handler: RetireHandler): Promise<DrainingAncestor[] | undefined> {
    if (this.#max <= 1 || this.#closed) return undefined;
    const opening = (this.#endpoint ??= RetireEndpoint.open(handler));
    const failed = () => {
      if (this.#endpoint === opening) this.#endpoint = undefined; // the next upgrade tries again
      return undefined;
    };
    const [endpoint] = await Promise.all([opening.catch(failed), this.#refresh()]);
    // Without an endpoint the child cannot reach this generation: it will not upgrade while this one drains.
    const chain = endpoint ? [...this.#ancestors, { generation: this.#generation, pid: process.pid, endpoint: endpoint.name }] : [...this.#ancestors];
    return chain.slice(-Math.min(this.#max, MAX_DRAINING_CHAIN));
  }

  /**
   * The successor is ready and this generation is about to drain too: if that
   * makes more than `max` draining generations, tell the oldest to finish and
   * wait until they are drained (each at most FINISH_TIMEOUT_MS).
   */
  async makeRoom(): Promise<Retired[]> {
    if (this.#max <= 1) return [];
    await this.#refresh();
    const excess = this.#ancestors.length + 1 - this.#max;
    if (excess <= 0) return [];
    const oldest = this.#ancestors.slice(0, excess);
    return Promise.all(
      oldest.map(async (ancestor) => {
        const started = performance.now();
        const answer = await askAncestor(ancestor, 'finish', FINISH_TIMEOUT_MS);
        const drained = answer.kind === 'gone' || (answer.kind === 'finishing' && answer.finished) || (answer.kind === 'refused' && !DRAINING_STATES.has(answer.state));
        if (drained) this.#ancestors = this.#ancestors.filter((a) => a !== ancestor);
        return { ancestor, drained, elapsedMs: performance.now() - started };
      }),
    );
  }

  /** This generation is done: its endpoint closes (a descendant waiting on it sees it drained). */
  close(): void {
    this.#closed = true;
    void this.#endpoint?.then((endpoint) => endpoint.close(), () => {});
  }

  /**
   * Forget the ancestors that are no longer draining. One that did not answer
   * in time still counts; one whose name is held by another process than the
   * one named (askAncestor checks its credentials) is gone.
   */
  async #refresh(): Promise<void> {
    const answers = await Promise.all(this.#ancestors.map((a) => askAncestor(a, 'status', STATUS_TIMEOUT_MS)));
    const stillDraining = (answer: AncestorAnswer) => answer.kind === 'unknown' || (answer.kind === 'state' && DRAINING_STATES.has(answer.state));
    this.#ancestors = this.#ancestors.filter((_, i) => stillDraining(answers[i]!));
  }
}
