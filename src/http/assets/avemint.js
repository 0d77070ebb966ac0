// avemint.js: a tiny, dependency-free helper for single-page apps signed in with avemint.
// Served by avemint at /avemint.js. Import it as an ES module:
//
//   import { getToken, fetchWithToken } from '/avemint.js';
//
// getToken({ audience }) (or getToken({ profile })) returns an app JWT for the signed-in user. It is cached until shortly before it
// expires, concurrent calls share one request, and the request carries the session cookie
// (credentials: 'include') and the header `X-CSRF: 1` that avemint requires. When avemint answers
// `login_required`, the configured handler runs (by default: go to /auth/login and come back here).
//
// fetchWithToken(url, init) calls an API with `Authorization: Bearer <app JWT>` and retries once with a
// fresh token if the API answers 401.

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
    const error = body && typeof body.error === 'string' ? body.error : undefined;
    const description = body && typeof body.error_description === 'string' ? body.error_description : undefined;
    if (error === 'login_required') {
      cache.clear();
      settings.onLoginRequired();
      throw new LoginRequiredError(description);
    }
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
