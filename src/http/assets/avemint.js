// avemint.js: a tiny, dependency-free helper for single-page apps signed in with avemint.
// Served by avemint at /avemint.js. Import it as an ES module:
//
//   import { apiFetch, getToken, fetchWithToken } from '/avemint.js';
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

/** Tokens are treated as expired this many seconds before they really expire. */
export const EXPIRY_MARGIN_SECONDS = 30;

const settings = {
  base: '',
  onLoginRequired: redirectToLogin,
};

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
  const here = location.pathname + location.search + location.hash;
  location.assign(`${settings.base}/auth/login?return_to=${encodeURIComponent(here)}`);
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

/** The user has no session (any more): forget tokens, run the handler, and return the error to throw. */
function loginRequired(description) {
  cache.clear();
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
  const init = { method: 'POST', credentials: 'include', headers: { 'X-CSRF': '1' } };
  if (target) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(target);
  }
  const response = await fetch(`${settings.base}/auth/token`, init);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const { error, description } = errorOf(body);
    if (error === 'login_required') throw loginRequired(description);
    throw new TokenError(response.status, error, description);
  }
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
    let body = null;
    try {
      body = await response.clone().json();
    } catch {
      body = null;
    }
    const { error, description } = errorOf(body);
    if (error === 'login_required') throw loginRequired(description);
  }
  return response;
}
