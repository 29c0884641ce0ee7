/**
 * The child side of an upgrade: read and validate what the parent handed over,
 * report ready (or an error), and notice when the parent is gone (EOF on the
 * control channel). Never calls back into Ecdysis.
 */
import { Socket } from 'node:net';
import { EcdysisError } from '../errors.ts';
import { closeQuietly, native } from './native.ts';
import {
  FrameDecoder,
  HANDOFF_ENV,
  COMMIT_PROTOCOL_VERSION,
  MIN_PROTOCOL_VERSION,
  encodeFrame,
  parseHandoff,
  validateHello,
  validateParentFrame,
  type HelloFrame,
} from './protocol.ts';
import { debuglog } from 'node:util';

const debug = debuglog('ecdysis');

/** How long the child waits for the hello frame; the parent sends it right after spawn. */
export const HELLO_TIMEOUT_MS = 10_000;

export interface ParentLink {
  hello: HelloFrame;
  /**
   * Send ready and wait for the parent's commit: 'committed', or 'parent-gone'
   * when the parent died first (this generation then carries on alone). A parent
   * that gave up on this child never commits; it kills it.
   */
  sendReady(): Promise<'committed' | 'parent-gone'>;
  /** Report a start-up failure to the parent (best effort); resolves once written. */
  sendError(code: string, message: string): Promise<boolean>;
  /** Resolves when the parent has exited (EOF on the control channel). */
  parentExited: Promise<void>;
  readonly parentAlive: boolean;
  /** Close the control channel (this process is exiting). */
  close(): void;
}

/**
 * Read the private environment variable (and delete it), validate the control
 * fd, read the hello frame. Returns undefined when this process was not started
 * by an upgrade. Throws ERR_ECDYSIS_BAD_ENVIRONMENT, _PROTOCOL or
 * _PROTOCOL_VERSION; never hangs longer than `helloTimeoutMs`.
 */
export async function connectToParent(
  env: NodeJS.ProcessEnv = process.env,
  helloTimeoutMs = HELLO_TIMEOUT_MS,
): Promise<ParentLink | undefined> {
  const value = env[HANDOFF_ENV];
  if (value === undefined) return undefined;
  // Gone before anything else can fail, so no subprocess of ours ever sees it.
  delete env[HANDOFF_ENV];
  const { controlFd } = parseHandoff(value);

  let description;
  try {
    description = native().describe(controlFd);
  } catch (err) {
    throw new EcdysisError(
      'ERR_ECDYSIS_BAD_ENVIRONMENT',
      `${HANDOFF_ENV} names control fd ${controlFd}, which is unusable: ${(err as Error).message}`,
      { cause: err },
    );
  }
  if (!description.socket || description.domain !== 'unix' || description.type !== 'stream') {
    throw new EcdysisError(
      'ERR_ECDYSIS_BAD_ENVIRONMENT',
      `${HANDOFF_ENV} names control fd ${controlFd}, which is not a Unix stream socket`,
    );
  }
  native().setCloexec(controlFd, true);

  let control: Socket;
  try {
    control = new Socket({ fd: controlFd, readable: true, writable: true });
  } catch (err) {
    closeQuietly(controlFd);
    throw new EcdysisError('ERR_ECDYSIS_BAD_ENVIRONMENT', `control fd ${controlFd}: ${(err as Error).message}`, { cause: err });
  }
  // The channel must never keep this process alive on its own.
  control.unref();
  control.on('error', () => {});

  let hello: HelloFrame;
  try {
    hello = await readHello(control, helloTimeoutMs);
  } catch (err) {
    // Tell the parent why (best effort: the channel may be what is broken), so its
    // upgrade fails with this error rather than a bare exit.
    const error = err as EcdysisError;
    const frame = encodeFrame({ type: 'error', protocol: MIN_PROTOCOL_VERSION, pid: process.pid, code: error.code, message: error.message });
    await new Promise<void>((resolve) => {
      if (control.destroyed || !control.writable) return resolve();
      control.write(frame, () => resolve());
    });
    control.destroy();
    throw err;
  }

  let alive = true;
  let committed: (outcome: 'committed' | 'parent-gone') => void = () => {};
  const commit = new Promise<'committed' | 'parent-gone'>((resolve) => (committed = resolve));
  const parentExited = new Promise<void>((resolve) => {
    const gone = () => {
      if (!alive) return;
      alive = false;
      control.destroy();
      committed('parent-gone');
      resolve();
    };
    const decoder = new FrameDecoder();
    control.on('end', gone);
    control.on('close', gone);
    control.on('data', (chunk: Buffer) => {
      try {
        for (const frame of decoder.push(chunk)) if (validateParentFrame(frame).type === 'commit') committed('committed');
      } catch (err) {
        // A parent that speaks nonsense after hello cannot be trusted to commit or
        // to keep serving: drop the channel and carry on alone.
        debug('control channel: %s', (err as Error).message);
        gone();
      }
    });
    control.resume();
  });

  const write = (frame: Parameters<typeof encodeFrame>[0]) =>
    new Promise<boolean>((resolve) => {
      if (!alive || control.destroyed) return resolve(false);
      control.write(encodeFrame(frame), (err) => resolve(!err));
    });

  return {
    hello,
    parentExited,
    get parentAlive() {
      return alive;
    },
    sendReady: async () => {
      // Nothing else may hold the loop open yet (listeners accept only after
      // commit): the channel itself must, until the parent answers.
      control.ref();
      try {
        const delivered = await write({ type: 'ready', protocol: hello.protocol, pid: process.pid });
        if (!delivered) return 'parent-gone';
        // A version-1 parent never commits: it stops accepting when it reads ready.
        return hello.protocol < COMMIT_PROTOCOL_VERSION ? 'committed' : await commit;
      } finally {
        if (!control.destroyed) control.unref();
      }
    },
    sendError: (code, message) =>
      write({ type: 'error', protocol: hello.protocol, pid: process.pid, code, message: message.slice(0, 4096) }),
    close: () => control.destroy(),
  };
}

function readHello(control: Socket, timeoutMs: number): Promise<HelloFrame> {
  return new Promise<HelloFrame>((resolve, reject) => {
    const decoder = new FrameDecoder();
    const done = (err: Error | undefined, hello?: HelloFrame) => {
      clearTimeout(timer);
      control.off('data', onData);
      control.off('end', onEnd);
      control.off('close', onEnd);
      control.pause();
      if (err) reject(err);
      else resolve(hello!);
    };
    const onData = (chunk: Buffer) => {
      try {
        const frames = decoder.push(chunk);
        if (frames.length > 0) done(undefined, validateHello(frames[0]!));
      } catch (err) {
        done(err as Error);
      }
    };
    const onEnd = () =>
      done(
        new EcdysisError(
          'ERR_ECDYSIS_PROTOCOL',
          decoder.pending > 0
            ? `truncated hello: the control channel closed after ${decoder.pending} bytes`
            : 'the control channel closed before the parent sent hello',
        ),
      );
    const timer = setTimeout(
      () => done(new EcdysisError('ERR_ECDYSIS_PROTOCOL', `no hello from the parent within ${timeoutMs} ms`)),
      timeoutMs,
    );
    control.on('data', onData);
    control.on('end', onEnd);
    control.on('close', onEnd);
  });
}
