/**
 * rxjs, loaded only when an Observable is first asked for: serving, iterating
 * and the library's own consumers never need it, and an application that uses
 * no Observable starts without it. The class comes from the same CommonJS
 * module as the application's `import { Observable } from 'rxjs'` (rxjs maps
 * both `import` and `require` to dist/cjs under Node), so it is the same class.
 */
import { createRequire } from 'node:module';
import type { Observable, Subscriber, TeardownLogic } from 'rxjs';

let ObservableClass: typeof Observable | undefined;

export function lazyObservable<T>(subscribe: (subscriber: Subscriber<T>) => TeardownLogic): Observable<T> {
  ObservableClass ??= (createRequire(import.meta.url)('rxjs/internal/Observable') as { Observable: typeof Observable }).Observable;
  return new ObservableClass<T>(subscribe);
}

/** What a producer hands items to: an rxjs Subscriber, or one of the library's own consumers. */
export interface Sink<T> {
  next(value: T): void;
  error(err: unknown): void;
  complete(): void;
  readonly closed?: boolean;
}
