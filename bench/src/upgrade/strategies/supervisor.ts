/**
 * Socket-holding supervisor (apps/supervisor.mjs): the driver creates the
 * listening socket, hands it to the supervisor as fd 3 and closes its own copy
 * at once, so only the supervisor's workers ever accept on it. SIGHUP to the
 * supervisor starts a new worker and SIGTERMs the old one once the new one
 * says it is serving.
 */
import type { ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { APPS, launchApp } from '../../apps.ts';
import { stopChild } from '../../lib/children.ts';
import { HOST } from '../../lib/net.ts';
import type { Strategy } from '../strategy.ts';

export const supervisor: Strategy = {
  id: 'supervisor',
  label: 'socket-holding supervisor (fd passing, no protocol)',
  instances: 1,
  create(context) {
    let child: ChildProcess | undefined;
    return {
      async start() {
        const socket = createServer();
        await new Promise<void>((resolve, reject) => {
          socket.once('error', reject);
          socket.listen({ host: HOST, port: context.port, backlog: 511 }, resolve);
        });
        // Passed as a plain fd number (child_process wants a stream, not a server, as a handle).
        const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
        child = launchApp({ script: APPS.supervisor, log: context.log, extraStdio: [fd] });
        // The supervisor has its own copy now; this one must not accept anything.
        socket.close();
      },
      async trigger() {
        child!.kill('SIGHUP');
      },
      async stop() {
        if (child) await stopChild(child);
      },
    };
  },
};
