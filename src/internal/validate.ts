/**
 * Validation of options, shared by every layer: messages name the option
 * (`"options.upgradeTimeout" must be an integer from 1 to ...`).
 */
import { invalidOption } from '../errors.ts';

export function validateInteger(value: unknown, where: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw invalidOption(where, `must be an integer from ${min} to ${max}`, value);
  }
  return value;
}

export function validateBoolean(value: unknown, where: string): boolean {
  if (typeof value !== 'boolean') throw invalidOption(where, 'must be a boolean', value);
  return value;
}

/** Options must be an object naming only known options (a typo is an error, not a silent default). */
export function checkOptions(options: unknown, known: readonly string[]): Record<string, unknown> {
  if (options === undefined) return {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) throw invalidOption('options', 'must be an object', options);
  for (const name of Object.keys(options)) {
    if (!known.includes(name)) {
      throw invalidOption(`options.${name}`, `is not an option (known: ${known.join(', ')})`, (options as Record<string, unknown>)[name]);
    }
  }
  return options as Record<string, unknown>;
}

export function optionalBoolean(options: Record<string, unknown>, name: string, fallback: boolean): boolean {
  return options[name] === undefined ? fallback : validateBoolean(options[name], `options.${name}`);
}

export function optionalInteger(options: Record<string, unknown>, name: string, fallback: number, min: number, max: number): number {
  return options[name] === undefined ? fallback : validateInteger(options[name], `options.${name}`, min, max);
}
