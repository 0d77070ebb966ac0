// Type declarations of avemint.js (the package's main entry, also served by avemint at /avemint.js).
// Written by hand next to the module; test/exports.test.mjs checks that both export the same names, and
// `npm run typecheck` compiles test/types.ts against them with `tsc --strict`.

/** The signed-in user, from `GET /auth/session`: Ave's profile claims and when the session ends. Never a token. */
export interface User {
  /** Ave's subject identifier (identity UUID). */
  sub: string;
  /** Display name (`profile` scope). */
  name?: string;
  /** Ave handle (`profile` scope). */
  preferred_username?: string;
  /** Verified email (`email` scope). */
  email?: string;
  /** Avatar URL (`profile` scope). */
  picture?: string;
  /** When the session ends unless renewed by activity (unix seconds). */
  expires_at: number;
  /** Seconds until then (lifetime or idle timeout, whichever is first). */
  expires_in: number;
}

/** `GET /auth/session`'s answer (`session()`): the user, marked `authenticated: true`. */
export interface SessionInfo extends User {
  authenticated: true;
}

/** One of the user's sessions, as `GET /auth/sessions` lists them. */
export interface SessionListing {
  /** The session's id (the `sid` of its app JWTs); what endSession takes. */
  id: string;
  /** Unix seconds. */
  created_at: number;
  /** Unix seconds. */
  last_seen_at: number;
  /** Unix seconds. */
  expires_at: number;
  /** Browser and OS, e.g. "Firefox on Linux". */
  device?: string;
  /** The network it was signed in from (/24 or /48). */
  network?: string;
  /** True for the session making the request. */
  current: boolean;
}

/** Why a tab was logged out (`detail.reason` of `avemint:logged-out`). */
export type LoggedOutReason = 'login_required' | 'logout' | 'expired';

/** The `detail` of an `avemint:logged-out` event. */
export interface LoggedOutDetail {
  reason: LoggedOutReason;
}

/** An `avemint:logged-out` event. */
export type LoggedOutEvent = CustomEvent<LoggedOutDetail>;

/** The EventTarget `avemint:logged-out` is dispatched on. */
export interface AvemintEvents extends EventTarget {
  addEventListener(
    type: 'avemint:logged-out',
    listener: (event: LoggedOutEvent) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener(
    type: 'avemint:logged-out',
    listener: (event: LoggedOutEvent) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

declare global {
  interface WindowEventMap {
    'avemint:logged-out': LoggedOutEvent;
  }
}

/** Selects a token profile: by audience or by name; neither means avemint's default profile. */
export interface TokenTarget {
  audience?: string | null;
  profile?: string | null;
}

export interface GetTokenOptions extends TokenTarget {
  /** Skip the cache and ask avemint for a new token. */
  fresh?: boolean;
}

export interface ConfigureOptions {
  /** avemint's origin when it is not the page's own (that origin then needs CORS: `AVEMINT_ALLOWED_ORIGINS`). */
  base?: string;
  /** Called on `login_required` (default: redirectToLogin). */
  onLoginRequired?: () => void;
}

/** What Ave's sign-in page is asked to do besides signing in. */
export type SignInPrompt = 'select_account' | 'consent';

export interface SignInOptions {
  /** Where to come back to: a path on avemint's origin (default: the current page). */
  returnTo?: string;
  /** 'select_account': let the user pick another account; 'consent': show the consent screen again. */
  prompt?: SignInPrompt;
}

/** Which sessions signOut ends: this one (default), the user's others, or all. */
export type SignOutScope = 'this' | 'others' | 'all';

export interface SignOutOptions {
  scope?: SignOutScope;
}

/** Tokens are treated as expired this many seconds before they really expire. */
export declare const EXPIRY_MARGIN_SECONDS: 30;
/** The BroadcastChannel name the helper's tabs tell each other about logged-out events on. */
export declare const CHANNEL_NAME: 'avemint';
/** The name of the event dispatched on `events` (and `window`) when the user is logged out. */
export declare const LOGGED_OUT_EVENT: 'avemint:logged-out';
/** The prompts signIn accepts. */
export declare const PROMPTS: readonly SignInPrompt[];
/** Where `avemint:logged-out` is dispatched (also on `window` when there is one). */
export declare const events: AvemintEvents;

/** avemint answered `login_required`: the user has no session (any more). */
export declare class LoginRequiredError extends Error {
  constructor(description?: string);
  name: 'LoginRequiredError';
}

/** avemint refused for another reason: `error` is its error code, `status` the HTTP status. */
export declare class TokenError extends Error {
  constructor(status: number, error?: string, description?: string);
  name: 'TokenError';
  status: number;
  error: string | undefined;
}

/** Changes `base` and `onLoginRequired`. Throws a TypeError for a handler that is not a function. */
export declare function configure(options?: ConfigureOptions): void;
/** The default `login_required` handler: sign in, then come back to the current page. */
export declare function redirectToLogin(): void;
/** Forgets every cached token. */
export declare function clearTokens(): void;

/**
 * The signed-in user, or null when nobody is signed in; quiet (no redirect, no logged-out event, no 401).
 * Rejects with TokenError when avemint cannot answer.
 */
export declare function getUser(): Promise<User | null>;
/** Navigates to avemint's sign-in. Throws a TypeError for an unknown prompt. */
export declare function signIn(options?: SignInOptions): void;
/** Signs out (`POST /auth/logout`); 'this' and 'all' log out every tab. Rejects with TypeError for another scope. */
export declare function signOut(options?: SignOutOptions): Promise<void>;
/** signOut's first name. */
export declare function logout(options?: SignOutOptions): Promise<void>;

/** An app JWT for the signed-in user (cached; concurrent calls share one request). */
export declare function getToken(options?: GetTokenOptions): Promise<string>;
/** fetch() with `Authorization: Bearer <app JWT>`; retries once with a fresh token on a 401. */
export declare function fetchWithToken(url: RequestInfo | URL, init?: RequestInit, target?: TokenTarget): Promise<Response>;
/** fetch() of a route avemint proxies, on avemint's origin only, with the session cookie and `X-CSRF: 1`. */
export declare function apiFetch(path: string | URL, init?: RequestInit): Promise<Response>;

/** The signed-in user's sessions, most recently used first. */
export declare function sessions(): Promise<SessionListing[]>;
/** Ends one of the user's sessions; ending this tab's own logs out. */
export declare function endSession(id: string): Promise<void>;
/** `GET /auth/session`: rejects with LoginRequiredError (after the login handler) without a session. */
export declare function session(): Promise<SessionInfo>;
/** Watches the session's end and fires `avemint:logged-out` (reason 'expired') when it is gone. */
export declare function watchSession(): Promise<SessionInfo | null>;
/** Stops watchSession's timer. */
export declare function stopWatching(): void;
