// avemint.js: a tiny, dependency-free helper for single-page apps signed in with avemint.
// The npm package `avemint` (clients/js/ in avemint's repository, TypeScript declarations in avemint.d.ts, a React
// entry `avemint/react`), and served by avemint at /avemint.js from this very file. Import it as an ES module:
//
//   import { getUser, signIn, signOut, apiFetch } from 'avemint';        // bundled (Vite, webpack, ...)
//   import { getUser, signIn, signOut, apiFetch } from '/avemint.js';    // or straight from avemint's origin
//
// getUser() resolves to the signed-in user or null, quietly: no redirect, no logged-out event, no 401 in the
// console (`GET /auth/session?optional=1`). signIn({ returnTo, prompt }) goes to avemint's /auth/login (and on to Ave;
// `prompt: 'select_account'` lets the user pick another account); signOut({ scope }) ends the session.
//
// getToken({ audience }) (or getToken({ profile })) returns an app JWT for the signed-in user. It is cached until shortly before it
// expires, concurrent calls share one request, and the request carries the session cookie
// (credentials: 'include') and the header `X-CSRF: 1` that avemint requires. When avemint answers
// `login_required`, the configured handler runs (by default: go to /auth/login and come back here).
//
// fetchWithToken(url, init) calls an API with `Authorization: Bearer <app JWT>` and retries once with a
// fresh token if the API answers 401.
//
// apiFetch(path, init) calls an API that avemint proxies (proxy mode, the recommended way): on avemint's own
// origin only, with the session cookie and `X-CSRF: 1`; avemint attaches the app JWT on the server, so the page
// never holds a token. `login_required` runs the same handler as getToken.
//
// sessions(), endSession(id) and signOut({ scope }) (also called logout) list and end the user's sessions. The event
// `avemint:logged-out` (a CustomEvent, `detail.reason`: 'login_required' | 'logout' | 'expired') is dispatched on
// the exported `events` EventTarget and, in a browser, on `window`; watchSession() fires it when the session's
// `expires_in` runs out. Every logged-out event is told to the page's other tabs over the BroadcastChannel
// CHANNEL_NAME ('avemint'), where each tab forgets its tokens and fires its own event. No token goes over it.

/** Tokens are treated as expired this many seconds before they really expire. */
export const EXPIRY_MARGIN_SECONDS = 30;

const settings = {
  base: '',
  onLoginRequired: redirectToLogin,
};

/** The BroadcastChannel name the helper's tabs tell each other about logged-out events on. */
export const CHANNEL_NAME = 'avemint';

/** The name of the event dispatched on `events` (and `window`) when the user is logged out. */
export const LOGGED_OUT_EVENT = 'avemint:logged-out';

/** Where `avemint:logged-out` is dispatched (also on `window` when there is one). */
export const events = new EventTarget();

/** key: cacheKey(target) -> { token, expiresAt (ms) } */
const cache = new Map();
/** key: cacheKey(target) -> Promise<string> of the request in flight */
const inflight = new Map();

/** avemint answered `login_required`: the user has no session (any more). */
export class LoginRequiredError extends Error {
  constructor(description) {
    super(description || 'sign-in required');
    this.name = 'LoginRequiredError';
  }
}

/** avemint refused to issue a token for another reason (`error` is its error code). */
export class TokenError extends Error {
  constructor(status, error, description) {
    super(`${error || 'error'}: ${description || 'HTTP ' + status}`);
    this.name = 'TokenError';
    this.status = status;
    this.error = error;
  }
}

/**
 * Changes settings: `base` (avemint's origin, default: this page's origin) and
 * `onLoginRequired` (called on `login_required`; default: navigate to /auth/login?return_to=<current path>).
 */
export function configure({ base, onLoginRequired } = {}) {
  if (base !== undefined) settings.base = String(base).replace(/\/+$/, '');
  if (onLoginRequired !== undefined) {
    if (typeof onLoginRequired !== 'function') throw new TypeError('onLoginRequired must be a function');
    settings.onLoginRequired = onLoginRequired;
  }
}

/** The default `login_required` handler: sign in, then come back to the current page. */
export function redirectToLogin() {
  signIn();
}

/** The `prompt` values signIn passes on to Ave (avemint's `GET /auth/login?prompt=` accepts these only). */
export const PROMPTS = Object.freeze(['select_account', 'consent']);

/**
 * Signs in: navigates to avemint's `/auth/login`, which sends the browser on to Ave and, once signed in, back to
 * `returnTo` (a path on avemint's origin; default: the current page). `prompt`: 'select_account' makes Ave show its
 * account choice instead of signing in again as the identity used last (switching accounts); 'consent' shows
 * the consent screen again. Another `prompt` is a TypeError and nothing happens.
 */
export function signIn({ returnTo, prompt } = {}) {
  if (prompt !== undefined && prompt !== null && !PROMPTS.includes(prompt)) {
    throw new TypeError(`unknown sign-in prompt: ${prompt} (one of ${PROMPTS.join(', ')})`);
  }
  const back = returnTo === undefined || returnTo === null ? location.pathname + location.search + location.hash : returnTo;
  if (typeof back !== 'string') throw new TypeError('signIn takes returnTo as a path on avemint\'s origin');
  let url = `${settings.base}/auth/login?return_to=${encodeURIComponent(back)}`;
  if (prompt) url += `&prompt=${encodeURIComponent(prompt)}`;
  location.assign(url);
}

/** Forgets every cached token (call it after signing out). */
export function clearTokens() {
  cache.clear();
}

/** The JSON body selecting a token profile, or null for avemint's default profile. */
function targetOf({ audience, profile }) {
  const target = {};
  if (audience !== undefined && audience !== null) target.audience = audience;
  if (profile !== undefined && profile !== null) target.profile = profile;
  return Object.keys(target).length ? target : null;
}

/** The `error` and `error_description` of an avemint JSON error body, when they are strings. */
function errorOf(body) {
  const field = (name) => (body && typeof body[name] === 'string' ? body[name] : undefined);
  return { error: field('error'), description: field('error_description') };
}

/** The reasons an `avemint:logged-out` event gives in `detail.reason`. */
const REASONS = ['login_required', 'logout', 'expired'];
/** The id of this tab's session, from the last sessions() listing (to notice endSession of it). */
let currentSessionId = null;
/** watchSession's pending timer. */
let watchTimer = null;

/** Messages between tabs: only `{ type: 'logged-out', reason }`, never a token. */
const channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL_NAME) : null;
if (channel) {
  // In Node (tests) a channel would keep the process alive; browsers have no unref.
  if (typeof channel.unref === 'function') channel.unref();
  channel.onmessage = ({ data }) => {
    if (data && data.type === 'logged-out' && REASONS.includes(data.reason)) loggedOut(data.reason, false);
  };
}

/**
 * The user is logged out in this tab: forget tokens, stop watching the session, dispatch `avemint:logged-out`,
 * and (unless the news came from another tab) tell the other tabs.
 */
function loggedOut(reason, broadcast = true) {
  cache.clear();
  stopWatching();
  currentSessionId = null;
  const detail = { reason };
  events.dispatchEvent(new CustomEvent(LOGGED_OUT_EVENT, { detail }));
  if (typeof window !== 'undefined' && typeof window.dispatchEvent === 'function') {
    window.dispatchEvent(new CustomEvent(LOGGED_OUT_EVENT, { detail }));
  }
  if (broadcast && channel) channel.postMessage({ type: 'logged-out', reason });
}

/** The user has no session (any more): log out, run the handler, and return the error to throw. */
function loginRequired(description) {
  loggedOut('login_required');
  settings.onLoginRequired();
  return new LoginRequiredError(description);
}

/**
 * An app JWT for the signed-in user. `audience` (or `profile`) selects avemint's token profile (the default
 * profile when absent); `fresh: true` skips the cache. Rejects with LoginRequiredError (after calling the
 * handler) or TokenError.
 */
export function getToken({ audience, profile, fresh = false } = {}) {
  const target = targetOf({ audience, profile });
  const key = JSON.stringify(target);
  const hit = cache.get(key);
  if (!fresh && hit && hit.expiresAt > Date.now()) return Promise.resolve(hit.token);
  if (fresh) cache.delete(key);
  let pending = inflight.get(key);
  if (!pending) {
    pending = requestToken(target, key).finally(() => inflight.delete(key));
    inflight.set(key, pending);
  }
  return pending;
}

async function requestToken(target, key) {
  const response = await authCall('POST', '/auth/token', target === null ? undefined : target).catch((error) => {
    throw refusalOf(error, target);
  });
  const body = await jsonOf(response);
  if (!body || typeof body.access_token !== 'string') throw new TokenError(response.status, 'invalid_response', 'no access_token');
  const lifetime = Number(body.expires_in) > 0 ? Number(body.expires_in) : 0;
  const expiresAt = Date.now() + (lifetime - EXPIRY_MARGIN_SECONDS) * 1000;
  cache.set(key, { token: body.access_token, expiresAt });
  return body.access_token;
}

/**
 * fetch() with `Authorization: Bearer <app JWT>`. On a 401 from the API, gets a fresh token and retries once.
 * `options.audience` (or `options.profile`) selects the token, as for getToken.
 */
export async function fetchWithToken(url, init = {}, { audience, profile } = {}) {
  const send = (token) => {
    const headers = new Headers(init.headers);
    headers.set('Authorization', `Bearer ${token}`);
    return fetch(url, { ...init, headers });
  };
  const response = await send(await getToken({ audience, profile }));
  if (response.status !== 401) return response;
  return send(await getToken({ audience, profile, fresh: true }));
}

/** avemint's origin as a URL to resolve paths against: the configured `base`, or this page. */
function home() {
  return settings.base ? new URL(`${settings.base}/`) : new URL(location.href);
}

/**
 * fetch() of a route avemint proxies (proxy mode): `path` is resolved against avemint's origin (`base`, default
 * this page's origin) and must stay on it: an absolute URL of any other origin rejects with a TypeError and
 * nothing is sent. The request carries the session cookie (`credentials: 'include'`) and `X-CSRF: 1` next to the
 * caller's headers; avemint attaches the app JWT on the server, so no token reaches the page. When avemint answers
 * `login_required`, the handler runs (as for getToken) and the call rejects with LoginRequiredError; every other
 * answer (an API's own 401 included) is returned as it is.
 */
export async function apiFetch(path, init = {}) {
  if (typeof path !== 'string' && !(path instanceof URL)) {
    throw new TypeError('apiFetch takes a path (or a URL) on avemint\'s origin');
  }
  const origin = home();
  const url = new URL(String(path), origin);
  if (url.origin !== origin.origin) {
    throw new TypeError(`apiFetch calls avemint's origin (${origin.origin}) only, not ${url.origin}`);
  }
  const headers = new Headers(init.headers);
  headers.set('X-CSRF', '1');
  const response = await fetch(url.href, { ...init, headers, credentials: 'include' });
  if (response.status === 401 && /json/i.test(response.headers.get('Content-Type') || '')) {
    const { error, description } = errorOf(await jsonOf(response.clone()));
    if (error === 'login_required') throw loginRequired(description);
  }
  return response;
}

/** The body of an answer as JSON, or null. */
async function jsonOf(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/**
 * getToken's refusals that no retry fixes, told as such (the code stays in `error`): a profile page script may not
 * mint (403 `invalid_target`: unknown, or a proxied route's without `browser = true`) and no token endpoint at all
 * (404: `AVEMINT_TOKEN_ENDPOINT=off`).
 */
function refusalOf(error, target) {
  if (!(error instanceof TokenError)) return error;
  const what = target === null ? 'the default profile' : JSON.stringify(target);
  if (error.status === 403 && error.error === 'invalid_target') {
    return new TokenError(403, error.error, `avemint does not let page script mint a token for ${what} (no such ` +
      "profile, or a proxied route's profile without `browser = true`): call that API through its route with apiFetch");
  }
  if (error.status === 404) {
    return new TokenError(404, error.error || 'not_found', 'avemint serves no token endpoint ' +
      '(AVEMINT_TOKEN_ENDPOINT=off): call APIs through its proxied routes with apiFetch');
  }
  return error;
}

/**
 * A call of avemint's own `/auth/*` routes with the session cookie and `X-CSRF: 1`. A `login_required` answer
 * logs out (as getToken) and rejects with LoginRequiredError; another refusal rejects with TokenError.
 */
async function authCall(method, path, body, onLoginRequired = loginRequired) {
  const init = { method, credentials: 'include', headers: { 'X-CSRF': '1' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${settings.base}${path}`, init);
  if (response.ok) return response;
  const { error, description } = errorOf(await jsonOf(response));
  if (error === 'login_required') throw onLoginRequired(description);
  throw new TokenError(response.status, error, description);
}

/**
 * The signed-in user's sessions, most recently used first: `[{ id, created_at, last_seen_at, expires_at,
 * device?, network?, current }]` (times in unix seconds), from `GET /auth/sessions`.
 */
export async function sessions() {
  const body = await jsonOf(await authCall('GET', '/auth/sessions'));
  const list = body && Array.isArray(body.sessions) ? body.sessions : [];
  const current = list.find((s) => s && s.current === true);
  currentSessionId = current ? current.id : null;
  return list;
}

/**
 * Ends one of the user's sessions (`DELETE /auth/sessions/{id}`). Ending this tab's own session (as the last
 * sessions() listing marked it `current`) logs out: `avemint:logged-out` with reason 'logout'.
 */
export async function endSession(id) {
  if (typeof id !== 'string' || id === '') throw new TypeError('endSession takes a session id');
  const own = id === currentSessionId;
  await authCall('DELETE', `/auth/sessions/${encodeURIComponent(id)}`);
  if (own) loggedOut('logout');
}

/**
 * Signs out (`POST /auth/logout`). `scope`: 'this' (default) ends this session, 'others' ends the user's other
 * sessions and keeps this one, 'all' ends every one. 'this' and 'all' then log out every tab:
 * `avemint:logged-out` with reason 'logout'. (The default login handler does not run.) The same as logout().
 */
export function signOut({ scope = 'this' } = {}) {
  return logout({ scope });
}

/** signOut's first name, kept for pages written before it. */
export async function logout({ scope = 'this' } = {}) {
  if (!['this', 'others', 'all'].includes(scope)) throw new TypeError(`unknown logout scope: ${scope}`);
  const body = scope === 'this' ? undefined : { scope };
  const ended = (description) => {
    loggedOut('logout');
    return new LoginRequiredError(description);
  };
  await authCall('POST', '/auth/logout', body, scope === 'others' ? loginRequired : ended);
  if (scope !== 'others') loggedOut('logout');
}

/** The signed-in user and the session's `expires_at` / `expires_in`, from `GET /auth/session`. */
export async function session() {
  return jsonOf(await authCall('GET', '/auth/session'));
}

/**
 * The signed-in user (`{ sub, name?, preferred_username?, email?, picture?, expires_at, expires_in }`), or null when
 * nobody is signed in: `GET /auth/session?optional=1`, which avemint answers 200 `{"authenticated": false}` without
 * a session, so a public page can ask "am I signed in?" quietly: no redirect, no login handler, no logged-out event,
 * no 401 in the console. Rejects with TokenError only when avemint cannot answer (e.g. 503).
 */
export async function getUser() {
  const response = await fetch(`${settings.base}/auth/session?optional=1`, {
    method: 'GET',
    credentials: 'include',
    headers: { 'X-CSRF': '1' },
  });
  const body = await jsonOf(response);
  if (response.ok) {
    if (body && body.authenticated === false) return null;
    if (body && typeof body.sub === 'string') {
      const { authenticated, ...user } = body;
      return user;
    }
    throw new TokenError(response.status, 'invalid_response', 'no user in the answer of /auth/session');
  }
  const { error, description } = errorOf(body);
  // An avemint that predates `optional=1` answers 401 instead: still signed out, still quiet.
  if (error === 'login_required') return null;
  throw new TokenError(response.status, error, description);
}

/** Timers cannot wait longer than this (about 24.8 days). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Watches the session's end: reads `expires_in` from `GET /auth/session` and checks again when it runs out (the
 * idle end moves forward with use, so the session may have been extended meanwhile). When the session is gone,
 * fires `avemint:logged-out` with reason 'expired' in every tab. Resolves with the first session answer.
 */
export async function watchSession() {
  stopWatching();
  const check = async () => {
    let current;
    try {
      current = await authCall('GET', '/auth/session', undefined, (description) => {
        loggedOut('expired');
        return new LoginRequiredError(description);
      });
      current = await jsonOf(current);
    } catch (error) {
      if (error instanceof LoginRequiredError) throw error;
      schedule(60); // avemint unreachable or refusing: look again in a minute
      return null;
    }
    const left = Number(current && current.expires_in);
    if (!(left > 0)) {
      loggedOut('expired');
      throw new LoginRequiredError('session expired');
    }
    schedule(left);
    return current;
  };
  const schedule = (seconds) => {
    watchTimer = setTimeout(() => check().catch(() => {}), Math.min(seconds * 1000, MAX_TIMER_MS));
  };
  return check();
}

/** Stops watchSession's timer. */
export function stopWatching() {
  if (watchTimer !== null) clearTimeout(watchTimer);
  watchTimer = null;
}
