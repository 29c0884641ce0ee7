/**
 * Node's module compile cache across generations (option `compileCache`,
 * Node 22.1 and later): the next generation starts with NODE_COMPILE_CACHE,
 * so it compiles the application's modules from V8 code cached on disk by an
 * earlier generation instead of from source; each generation writes what it
 * compiled once it is ready (module.flushCompileCache, Node 22.10+; before
 * that, at its exit), off the path of the upgrade.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nodeModule } from './builtins.ts';

/** True on a Node that reads NODE_COMPILE_CACHE (22.1 and later). */
export function compileCacheSupported(version = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 22 || (major === 22 && minor >= 1);
}

/** The directory: `true` is Node's own default, NODE_COMPILE_CACHE if set, else <tmpdir>/node-compile-cache. */
export function compileCacheDir(option: true | string, env: NodeJS.ProcessEnv = process.env): string {
  if (typeof option === 'string') return option;
  return env.NODE_COMPILE_CACHE || join(tmpdir(), 'node-compile-cache');
}

/** After ready(): write what this generation compiled, for the next one. */
export function flushCompileCache(): void {
  setImmediate(() => {
    try {
      nodeModule().flushCompileCache?.();
    } catch {
      // A cache miss must never cost the service anything.
    }
  });
}
