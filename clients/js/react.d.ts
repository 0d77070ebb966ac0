// Type declarations of react.js (`avemint/react`). Checked like avemint.d.ts (test/exports.test.mjs, test/types.ts).
import type { ReactElement, ReactNode } from 'react';

import type { SignInOptions, SignOutOptions, User } from './avemint.js';

/** The session as the provider shows it. */
export type SessionState =
  | { status: 'loading'; user: null; error: null }
  | { status: 'authenticated'; user: User; error: null }
  | { status: 'unauthenticated'; user: null; error: null }
  | { status: 'error'; user: null; error: unknown };

/** The session state without React (what SessionProvider renders from). */
export interface SessionStore {
  /** The current state; a new object after each change. */
  getSnapshot(): SessionState;
  /** Calls `listener` after each change; returns the function that stops it. */
  subscribe(listener: () => void): () => void;
  /** Asks getUser() again; resolves to the state afterwards. */
  refresh(): Promise<SessionState>;
}

/** What useSession() returns. */
export type SessionContextValue = SessionState & {
  signIn(options?: SignInOptions): void;
  signOut(options?: SignOutOptions): Promise<void>;
  refresh(): Promise<SessionState>;
};

export interface SessionStoreOptions {
  /** Run watchSession() while signed in: the session's end turns the state 'unauthenticated' by itself. */
  watch?: boolean;
}

export interface SessionProviderProps {
  children?: ReactNode;
  /** A store to share (default: the provider makes its own). */
  store?: SessionStore;
  /** For the provider's own store: see SessionStoreOptions.watch. */
  watch?: boolean;
}

export declare function createSessionStore(options?: SessionStoreOptions): SessionStore;
export declare function SessionProvider(props: SessionProviderProps): ReactElement;
export declare function useSession(): SessionContextValue;
