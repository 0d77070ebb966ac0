// Tests for src/http/assets/avemint.js with Node's built-in test runner (`node --test`), run by
// tests/spa_helper.rs. `fetch` and `location` are replaced by recording stubs; nothing else is faked.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  getToken,
  fetchWithToken,
  configure,
  clearTokens,
  redirectToLogin,
  LoginRequiredError,
  TokenError,
} from '../../src/http/assets/avemint.js';

let calls;
let handlers;

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

function tokenResponse(token, expiresIn = 300) {
  return json(200, { access_token: token, token_type: 'Bearer', expires_in: expiresIn });
}

globalThis.fetch = async (url, init = {}) => {
  const call = { url: String(url), init };
  calls.push(call);
  const handler = handlers.shift();
  assert.ok(handler, `unexpected fetch of ${url}`);
  return handler(call);
};

const navigations = [];
globalThis.location = {
  pathname: '/app/page',
  search: '?tab=2',
  hash: '#x',
  assign: (url) => navigations.push(url),
};

beforeEach(() => {
  calls = [];
  handlers = [];
  navigations.length = 0;
  clearTokens();
  configure({ base: '', onLoginRequired: redirectToLogin });
});

test('getToken POSTs to /auth/token with X-CSRF and credentials, and no body without an audience', async () => {
  handlers.push(() => tokenResponse('jwt-1'));
  assert.equal(await getToken(), 'jwt-1');
  assert.equal(calls.length, 1);
  const { url, init } = calls[0];
  assert.equal(url, '/auth/token');
  assert.equal(init.method, 'POST');
  assert.equal(init.credentials, 'include');
  assert.equal(init.headers['X-CSRF'], '1');
  assert.equal(init.body, undefined);
  assert.equal(init.headers['Content-Type'], undefined);
});

test('getToken sends the audience as a JSON body', async () => {
  handlers.push(() => tokenResponse('jwt-aud'));
  assert.equal(await getToken({ audience: 'https://api.example.com' }), 'jwt-aud');
  const { init } = calls[0];
  assert.equal(init.headers['Content-Type'], 'application/json');
  assert.deepEqual(JSON.parse(init.body), { audience: 'https://api.example.com' });
});

test('getToken sends a profile name as a JSON body, and caches per profile', async () => {
  handlers.push(() => tokenResponse('jwt-orders'));
  assert.equal(await getToken({ profile: 'orders' }), 'jwt-orders');
  assert.deepEqual(JSON.parse(calls[0].init.body), { profile: 'orders' });
  assert.equal(await getToken({ profile: 'orders' }), 'jwt-orders');
  handlers.push(() => tokenResponse('jwt-default'));
  assert.equal(await getToken(), 'jwt-default');
  assert.equal(calls.length, 2);
});

test('getToken caches the token until shortly before it expires', async () => {
  handlers.push(() => tokenResponse('long', 300));
  assert.equal(await getToken(), 'long');
  assert.equal(await getToken(), 'long');
  assert.equal(calls.length, 1, 'second call served from the cache');

  clearTokens();
  handlers.push(() => tokenResponse('short', 20), () => tokenResponse('next', 300));
  assert.equal(await getToken(), 'short');
  assert.equal(await getToken(), 'next', 'a token within the expiry margin is not reused');
  assert.equal(calls.length, 3);
});

test('tokens are cached per audience', async () => {
  handlers.push(() => tokenResponse('default'), () => tokenResponse('api'));
  assert.equal(await getToken(), 'default');
  assert.equal(await getToken({ audience: 'api' }), 'api');
  assert.equal(await getToken(), 'default');
  assert.equal(await getToken({ audience: 'api' }), 'api');
  assert.equal(calls.length, 2);
});

test('concurrent getToken calls share one request', async () => {
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  handlers.push(async () => {
    await gate;
    return tokenResponse('shared');
  });
  const all = Promise.all([getToken(), getToken(), getToken()]);
  release();
  assert.deepEqual(await all, ['shared', 'shared', 'shared']);
  assert.equal(calls.length, 1);
});

test('a failed request is not cached and the next call tries again', async () => {
  handlers.push(() => json(503, { error: 'temporarily_unavailable', error_description: 'busy' }));
  await assert.rejects(getToken(), (e) => e instanceof TokenError && e.status === 503 && e.error === 'temporarily_unavailable');
  handlers.push(() => tokenResponse('after'));
  assert.equal(await getToken(), 'after');
});

test('login_required navigates to /auth/login with the current path by default', async () => {
  handlers.push(() => json(401, { error: 'login_required', error_description: 'no valid session' }));
  await assert.rejects(getToken(), LoginRequiredError);
  assert.deepEqual(navigations, ['/auth/login?return_to=' + encodeURIComponent('/app/page?tab=2#x')]);
});

test('login_required calls a configured handler instead', async () => {
  let called = 0;
  configure({ onLoginRequired: () => called++ });
  handlers.push(() => json(401, { error: 'login_required', error_description: 'no valid session' }));
  await assert.rejects(getToken(), LoginRequiredError);
  assert.equal(called, 1);
  assert.deepEqual(navigations, []);
});

test('configure rejects a handler that is not a function', () => {
  assert.throws(() => configure({ onLoginRequired: 'nope' }), TypeError);
});

test('a configured base is used for the token endpoint and the login redirect', async () => {
  configure({ base: 'https://auth.example.com/' });
  handlers.push(() => json(401, { error: 'login_required', error_description: 'x' }));
  await assert.rejects(getToken(), LoginRequiredError);
  assert.equal(calls[0].url, 'https://auth.example.com/auth/token');
  assert.match(navigations[0], /^https:\/\/auth\.example\.com\/auth\/login\?return_to=/);
});

test('fetchWithToken adds the bearer and keeps the caller\'s headers and options', async () => {
  handlers.push(() => tokenResponse('jwt-b'), () => json(200, { ok: true }));
  const r = await fetchWithToken('https://api.example.com/things', { method: 'PUT', headers: { 'X-Thing': 'y' } });
  assert.equal(r.status, 200);
  const api = calls[1];
  assert.equal(api.url, 'https://api.example.com/things');
  assert.equal(api.init.method, 'PUT');
  assert.equal(api.init.headers.get('Authorization'), 'Bearer jwt-b');
  assert.equal(api.init.headers.get('X-Thing'), 'y');
});

test('fetchWithToken retries once with a fresh token on 401', async () => {
  handlers.push(
    () => tokenResponse('stale'),
    () => json(401, { error: 'invalid_token' }),
    () => tokenResponse('fresh'),
    () => json(200, { ok: true }),
  );
  const r = await fetchWithToken('/api');
  assert.equal(r.status, 200);
  assert.deepEqual(
    calls.map((c) => c.url),
    ['/auth/token', '/api', '/auth/token', '/api'],
  );
  assert.equal(calls[3].init.headers.get('Authorization'), 'Bearer fresh');
  // The fresh token replaced the stale one in the cache.
  handlers.push(() => json(200, {}));
  await fetchWithToken('/api');
  assert.equal(calls[4].init.headers.get('Authorization'), 'Bearer fresh');
});

test('fetchWithToken retries only once', async () => {
  handlers.push(
    () => tokenResponse('a'),
    () => json(401, {}),
    () => tokenResponse('b'),
    () => json(401, {}),
  );
  const r = await fetchWithToken('/api');
  assert.equal(r.status, 401);
  assert.equal(calls.length, 4);
});

test('fetchWithToken passes the audience on to getToken', async () => {
  handlers.push(() => tokenResponse('for-api'), () => json(200, {}));
  await fetchWithToken('/api', {}, { audience: 'https://api.example.com' });
  assert.deepEqual(JSON.parse(calls[0].init.body), { audience: 'https://api.example.com' });
});
