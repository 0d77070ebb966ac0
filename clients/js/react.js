// avemint/react: the signed-in user as React state. React is a peer dependency of the package; this entry is not
// served at /avemint.js (which has no imports).
//
//   import { SessionProvider, useSession } from 'avemint/react';
//
//   <SessionProvider><App /></SessionProvider>
//   const { status, user, signIn, signOut } = useSession();   // status: 'loading' | 'authenticated' | 'unauthenticated' | 'error'
//
// The provider asks getUser() once when it mounts (quietly: a signed-out visitor sees no redirect and no 401) and
// turns to 'unauthenticated' on every `avemint:logged-out` event, including one from another tab. With `watch`, it
// also notices the session's end by itself (watchSession: reason 'expired').
import { createContext, createElement, useContext, useEffect, useMemo, useState, useSyncExternalStore } from 'react';

import { events, getUser, LOGGED_OUT_EVENT, signIn, signOut, stopWatching, watchSession } from './avemint.js';

/** The state before the first answer. */
const LOADING = Object.freeze({ status: 'loading', user: null, error: null });

/**
 * The session state the provider shows, without React: `getSnapshot()` (a frozen `{ status, user, error }`,
 * replaced on every change), `subscribe(listener)` (returns the unsubscribe function; while anyone listens, a
 * logged-out event sets 'unauthenticated') and `refresh()` (asks getUser again; resolves to the new snapshot).
 * When answers overlap, the last request and any logged-out event after it win. `watch: true` runs watchSession()
 * while signed in, so the session's end (idle timeout, lifetime, ended elsewhere) turns the state
 * 'unauthenticated' without waiting for the next call to fail.
 */
export function createSessionStore({ watch = false } = {}) {
  let snapshot = LOADING;
  let generation = 0;
  const listeners = new Set();
  const set = (next) => {
    const was = snapshot.status;
    snapshot = Object.freeze(next);
    if (watch && next.status === 'authenticated' && was !== 'authenticated') watchSession().catch(() => {});
    if (watch && next.status !== 'authenticated' && was === 'authenticated') stopWatching();
    for (const listener of [...listeners]) listener();
  };
  const onLoggedOut = () => {
    generation += 1;
    set({ status: 'unauthenticated', user: null, error: null });
  };
  return {
    getSnapshot: () => snapshot,
    subscribe(listener) {
      if (listeners.size === 0) events.addEventListener(LOGGED_OUT_EVENT, onLoggedOut);
      listeners.add(listener);
      return () => {
        if (listeners.delete(listener) && listeners.size === 0) {
          events.removeEventListener(LOGGED_OUT_EVENT, onLoggedOut);
        }
      };
    },
    async refresh() {
      generation += 1;
      const mine = generation;
      let next;
      try {
        const user = await getUser();
        next = user ? { status: 'authenticated', user, error: null } : { status: 'unauthenticated', user: null, error: null };
      } catch (error) {
        next = { status: 'error', user: null, error };
      }
      if (mine === generation) set(next);
      return snapshot;
    },
  };
}

const SessionContext = createContext(null);

/** What the server renders (no request is made there). */
const serverSnapshot = () => LOADING;

/**
 * Provides the session to `useSession()` below it. `store` (optional) is a createSessionStore() to share, e.g.
 * with code outside React; by default the provider makes its own, watching the session's end when `watch` is set.
 */
export function SessionProvider({ children, store, watch = false }) {
  const [own] = useState(() => store || createSessionStore({ watch }));
  const state = useSyncExternalStore(own.subscribe, own.getSnapshot, serverSnapshot);
  useEffect(() => {
    own.refresh();
  }, [own]);
  const value = useMemo(() => ({ ...state, signIn, signOut, refresh: own.refresh }), [state, own]);
  return createElement(SessionContext.Provider, { value }, children);
}

/** The session: `{ status, user, error, signIn, signOut, refresh }`. Throws outside a SessionProvider. */
export function useSession() {
  const value = useContext(SessionContext);
  if (value === null) throw new Error('useSession() needs a <SessionProvider> above it');
  return value;
}
