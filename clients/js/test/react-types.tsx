// Compiled (never run) by `npm run typecheck`: `avemint/react` as a React app written in TSX sees it.
import { createSessionStore, SessionProvider, useSession } from 'avemint/react';
import type { SessionState, SessionStore } from 'avemint/react';

function Greeting() {
  const session = useSession();
  if (session.status === 'authenticated') {
    // Narrowed: the user is there.
    const name: string = session.user.name ?? session.user.sub;
    return <button onClick={() => void session.signOut({ scope: 'all' })}>Sign out {name}</button>;
  }
  if (session.status === 'unauthenticated') {
    // @ts-expect-error no user when signed out
    const sub: string = session.user.sub;
    void sub;
    return <button onClick={() => session.signIn({ prompt: 'select_account' })}>Sign in</button>;
  }
  if (session.status === 'error') return <p>avemint cannot answer: {String(session.error)}</p>;
  return <p>…</p>;
}

const store: SessionStore = createSessionStore();
const watching: SessionStore = createSessionStore({ watch: true });
// @ts-expect-error watch is a boolean
createSessionStore({ watch: 'yes' });
export const watched = <SessionProvider watch>{null}</SessionProvider>;
void watching;
const state: SessionState = store.getSnapshot();
const stop: () => void = store.subscribe(() => {});
void [state, stop, store.refresh()];

export const app = (
  <SessionProvider store={store}>
    <Greeting />
  </SessionProvider>
);
// @ts-expect-error the store is a SessionStore
export const wrong = <SessionProvider store={{}} />;
