/**
 * Triggers on a timer, for what Node services are known to leak: an upgrade
 * when the process's resident memory passes a bound (`{ rssAbove }`, checked
 * every `checkEvery` ms, at most one upgrade per check), or every so often
 * (`{ every }`, with jitter so that a fleet does not upgrade at once). The
 * reason the upgrade gets ('rss', 'every') shows in events and metrics.
 */
import { invalidOption } from '../errors.ts';
import { validateInteger } from '../internal/validate.ts';

/** `upgradeOn: [{ rssAbove: bytes, checkEvery?: ms }]`. */
export interface RssTrigger {
  /** Upgrade once process.memoryUsage.rss() is above this many bytes. */
  rssAbove: number;
  /** How often it is checked (milliseconds). Default 10000. */
  checkEvery?: number;
}

/** `upgradeOn: [{ every: ms, jitter?: fraction }]`. */
export interface EveryTrigger {
  /** Upgrade this often (milliseconds, at least 1000), counted from this generation's start. */
  every: number;
  /** A fraction of `every` by which each delay varies, at random, either way (0 to 0.5). Default 0.1. */
  jitter?: number;
}

export type TimerTriggerConfig = { kind: 'rss'; bytes: number; checkEvery: number } | { kind: 'every'; ms: number; jitter: number };

/** Is this trigger list entry a timer trigger? Then its validated form. */
export function timerTrigger(trigger: Record<string, unknown>, where: string): TimerTriggerConfig | undefined {
  const fields = Object.keys(trigger);
  if ('rssAbove' in trigger) {
    for (const name of fields) if (name !== 'rssAbove' && name !== 'checkEvery') throw invalidOption(`${where}.${name}`, 'is not a field of an rssAbove trigger (rssAbove, checkEvery)', trigger[name]);
    const bytes = validateInteger(trigger.rssAbove, `${where}.rssAbove`, 1 << 20, Number.MAX_SAFE_INTEGER);
    const checkEvery = trigger.checkEvery === undefined ? 10_000 : validateInteger(trigger.checkEvery, `${where}.checkEvery`, 100, 2_147_483_647);
    return { kind: 'rss', bytes, checkEvery };
  }
  if ('every' in trigger) {
    for (const name of fields) if (name !== 'every' && name !== 'jitter') throw invalidOption(`${where}.${name}`, 'is not a field of an every trigger (every, jitter)', trigger[name]);
    const ms = validateInteger(trigger.every, `${where}.every`, 1_000, 2_147_483_647);
    const jitter = trigger.jitter ?? 0.1;
    if (typeof jitter !== 'number' || !(jitter >= 0 && jitter <= 0.5)) throw invalidOption(`${where}.jitter`, 'must be a number from 0 to 0.5', jitter);
    return { kind: 'every', ms, jitter };
  }
  return undefined;
}

/** While an `every` trigger cannot upgrade (not ready yet, an upgrade under way), it asks again this often. */
const EVERY_RETRY_MS = 1_000;

/**
 * Start the timers; `fire(reason)` is called when one is due and says whether
 * the upgrade was started (the caller decides whether this generation may
 * upgrade now). Returns what stops them. They never keep the process alive.
 */
export function installTimerTriggers(configs: readonly TimerTriggerConfig[], fire: (reason: 'rss' | 'every') => boolean): () => void {
  const timers = new Set<NodeJS.Timeout>();
  for (const config of configs) {
    if (config.kind === 'rss') {
      const timer = setInterval(() => {
        if (process.memoryUsage.rss() > config.bytes) fire('rss');
      }, config.checkEvery);
      timer.unref();
      timers.add(timer);
    } else {
      const delay = () => Math.max(1, Math.round(config.ms * (1 + (Math.random() * 2 - 1) * config.jitter)));
      // After an upgrade that failed, this generation still serves: the next one is due a period later.
      const arm = (ms: number) => {
        const timer = setTimeout(() => {
          timers.delete(timer);
          arm(fire('every') ? delay() : EVERY_RETRY_MS);
        }, ms);
        timer.unref();
        timers.add(timer);
      };
      arm(delay());
    }
  }
  return () => {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
  };
}
