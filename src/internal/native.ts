/**
 * The typed surface of the C++ addon and its loader. The addon does only what
 * Node cannot: create listening sockets itself, duplicate and close fds, and
 * describe an fd. Everything it creates is close-on-exec.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface TcpSocketFlags {
  reuseAddr: boolean;
  reusePort: boolean;
  ipv6Only: boolean;
}

export interface FdDescription {
  /** False for a regular file, pipe or device. */
  socket: boolean;
  inode: number;
  cloexec: boolean;
  domain?: 'inet' | 'inet6' | 'unix' | 'other';
  type?: 'stream' | 'dgram' | 'seqpacket' | 'other';
  listening?: boolean;
  address?: string;
  port?: number;
  /** Unix sockets: the bound path; an abstract name starts with '\0'. */
  path?: string;
}

export interface NativeBinding {
  listenTcp(host: string, port: number, backlog: number, flags: TcpSocketFlags): number;
  listenUnix(path: string, backlog: number): number;
  dupCloexec(fd: number): number;
  setCloexec(fd: number, on: boolean): void;
  close(fd: number): void;
  describe(fd: number): FdDescription;
  /** TCP listener about to close: drop new SYNs so no handshake completes any more. */
  refuseNewConnections(fd: number): void;
  /** Undo refuseNewConnections (SO_DETACH_FILTER); throws ENOENT when there is none. */
  acceptNewConnections(fd: number): void;
  /** TCP listener: established connections not yet accepted. */
  acceptQueueLength(fd: number): number;
}

/**
 * The package's root: the nearest directory above this module whose
 * package.json names ecdysis (dist/internal/ when installed, or a compiled copy
 * of src/ elsewhere in a checkout).
 */
function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'ecdysis') return dir;
      } catch {
        // not ours; keep looking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) return fileURLToPath(new URL('../../', import.meta.url));
    dir = parent;
  }
}

function load(): NativeBinding {
  const packageRoot = findPackageRoot();
  const require = createRequire(import.meta.url);
  try {
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeBinding;
    return nodeGypBuild(packageRoot);
  } catch (err) {
    const error = new Error(
      `ecdysis: could not load its native addon from ${packageRoot} on ${process.platform}-${process.arch}, ` +
        `Node ${process.version}. ecdysis supports Linux only. If you are on Linux, the build probably ` +
        `did not run or failed: it needs python3, make and a C++ compiler; run "npm rebuild ecdysis" ` +
        `and read its output. Cause: ${(err as Error).message}`,
      { cause: err },
    );
    (error as NodeJS.ErrnoException).code = 'ERR_ECDYSIS_UNSUPPORTED';
    throw error;
  }
}

let binding: NativeBinding | undefined;

/** The addon, loaded on first use so that importing the library never throws. */
export function native(): NativeBinding {
  binding ??= load();
  return binding;
}

/** Close an fd, ignoring EBADF (already closed): used on cleanup paths only. */
export function closeQuietly(fd: number): void {
  try {
    native().close(fd);
  } catch {
    // Cleanup must not throw; the fd is gone either way.
  }
}
