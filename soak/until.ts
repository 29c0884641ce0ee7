/** How often the driver looks again at records and at /proc while it waits. */
export const POLL_MS = 20;

/**
 * Poll `check` until it returns something other than undefined, or `timeoutMs`
 * passes (then undefined). Polling, not waiting on events, because half of
 * what the driver waits for (a grandchild's death) has no event to wait on, and
 * one way of waiting for everything keeps every wait bounded the same way.
 */
export async function until<T>(check: () => T | undefined, timeoutMs: number): Promise<T | undefined> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() >= deadline) return undefined;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/** Like {@link until}, but a timeout is an error naming what was awaited. */
export async function mustUntil<T>(check: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
  const value = await until(check, timeoutMs);
  if (value === undefined) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
  return value;
}
