/** Admission of a new listener: what the state allows, before and after each await. */
import { EcdysisError } from '../errors.ts';
import type { ListenRequest } from '../kinds/kind.ts';
import type { ListenRole } from '../generation/listener-set.ts';
import type { Listener } from '../listeners/listener.ts';
import type { Generation } from './core.ts';

/** Every listen method: the kind validates the request, the listener set carries it out. */
export async function listen<L extends Listener>(g: Generation, prepare: () => Promise<ListenRequest<L>>): Promise<L> {
  const admit = () => {
    const refusal = g.refusal('listen');
    if (refusal) throw refusal;
    if (g.role === 'primary' && g.phase.state !== 'starting') {
      throw new EcdysisError('ERR_ECDYSIS_WORKER', 'with workers, every listener must be asked for before ready(): the workers are started with the sockets there are then');
    }
  };
  admit();
  const request = await prepare();
  admit();
  const listener = await g.listeners.add(request, admit, listenRole(g));
  if (g.phase.state === 'ready' && g.accepts(listener)) listener.start();
  return listener;
}

function listenRole(g: Generation): ListenRole {
  if (g.role === 'worker') {
    const index = g.link!.hello.worker!.index;
    return {
      inheritedOnly: (key) =>
        new EcdysisError('ERR_ECDYSIS_WORKER', `worker ${index} asked for a socket ("${key}") its primary (pid ${g.link!.hello.parentPid}) did not create: every worker must ask for the sockets the primary asked for before its ready()`),
    };
  }
  return g.role === 'primary' ? { members: g.options.workers! } : {};
}
