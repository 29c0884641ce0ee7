/**
 * What the CLI prints of a server's answers, made harmless for a terminal.
 * Whoever listens at --socket writes those answers: control characters in them
 * (ESC sequences that retitle the window, clear the screen, move the cursor, or
 * a C1 CSI) are shown escaped, never passed to the terminal.
 */

/** C0 controls, DEL and C1 controls: the characters a terminal acts on. */
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/g;

const NAMED: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/** `value` as text, with every control character written as an escape (`\x1b`, `\n`). */
export function printable(value: unknown): string {
  return String(value).replace(CONTROL, (c) => NAMED[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/**
 * JSON text with no raw control character: JSON.stringify escapes C0 already,
 * DEL and C1 get the same \u00XX escape here (still valid JSON, same value).
 */
export function printableJson(value: unknown): string {
  return JSON.stringify(value).replace(CONTROL, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
