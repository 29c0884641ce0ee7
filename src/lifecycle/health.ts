/**
 * Health as a load balancer or Kubernetes asks for it (`ecdysis.health()`, the
 * probe listener's /livez and /readyz): the application's checks, and whether
 * this generation serves and is not stopping.
 */
import { invalidOption } from '../errors.ts';
import type { Health } from '../triggers/probes.ts';
import type { Generation } from './core.ts';

/** A check the application registers: true (or a promise of true) while healthy. */
export type HealthCheck = () => boolean | Promise<boolean>;

/** A check that has not answered by then counts as failed. */
export const CHECK_TIMEOUT_MS = 1_000;

export function addHealthCheck(g: Generation, name: string, check: HealthCheck): () => void {
  if (typeof name !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(name)) throw invalidOption('name', 'must be 1 to 64 letters, digits, "_", ".", ":" or "-"', name);
  if (typeof check !== 'function') throw invalidOption('check', 'must be a function', check);
  if (g.healthChecks.has(name)) throw invalidOption('name', 'is already a health check', name);
  g.healthChecks.set(name, check);
  return () => {
    if (g.healthChecks.get(name) === check) g.healthChecks.delete(name);
  };
}

export async function health(g: Generation): Promise<Health> {
  const entries = [...g.healthChecks];
  const results = await Promise.all(entries.map(([, check]) => runCheck(check)));
  const checks = Object.fromEntries(entries.map(([name], i) => [name, results[i]!]));
  const live = results.every(Boolean);
  return { live, ready: live && serviceReady(g), state: g.phase.state, generation: g.generation, pid: process.pid, checks };
}

/**
 * Whether the service this process answers for is ready: this generation
 * serves, or it handed the service over in an upgrade and drains (a probe it
 * accepted just before the commit is answered after it: the successor serves
 * then, so the service is ready). A stop, a rollback or a lame-duck delay is
 * not ready.
 */
function serviceReady(g: Generation): boolean {
  if (g.rules.serving) return true;
  const phase = g.phase;
  return (phase.state === 'draining' || phase.state === 'probation') && phase.exit.info.mode === 'upgrade' && !phase.exit.goingAway;
}

async function runCheck(check: HealthCheck): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), CHECK_TIMEOUT_MS)));
    return (await Promise.race([Promise.resolve().then(check), late])) === true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
