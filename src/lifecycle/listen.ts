/** Admission of a new listener: what the state allows, before and after each await. */
import type { ListenRequest } from '../kinds/kind.ts';
import type { Listener } from '../listeners/listener.ts';
import type { Generation } from './core.ts';

/** Every listen method: the kind validates the request, the listener set carries it out. */
export async function listen<L extends Listener>(g: Generation, prepare: () => Promise<ListenRequest<L>>): Promise<L> {
  const admit = () => {
    const refusal = g.refusal('listen');
    if (refusal) throw refusal;
  };
  admit();
  const request = await prepare();
  admit();
  const listener = await g.listeners.add(request, admit);
  if (g.phase.state === 'ready') listener.start();
  return listener;
}
