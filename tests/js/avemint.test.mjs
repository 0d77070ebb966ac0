// Tests for src/http/assets/avemint.js with Node's built-in test runner (`node --test`), run by
// tests/spa_helper.rs. `fetch` and `location` are replaced by recording stubs; nothing else is faked.
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import {
  apiFetch,
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
  href: 'https://app.example.com/app/page?tab=2#x',
  origin: 'https://app.example.com',
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

test('apiFetch sends the session cookie and X-CSRF to the page\'s origin, keeping the caller\'s request', async () => {
  handlers.push(() => json(200, { hello: 'Ada' }));
  const r = await apiFetch('/api/orders/7?x=1', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Thing': 'y' },
    body: '{"n":1}',
  });
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { hello: 'Ada' });
  assert.equal(calls.length, 1, 'no token is fetched: avemint attaches it on the server');
  const { url, init } = calls[0];
  assert.equal(url, 'https://app.example.com/api/orders/7?x=1');
  assert.equal(init.method, 'POST');
  assert.equal(init.body, '{"n":1}');
  assert.equal(init.credentials, 'include');
  assert.equal(init.headers.get('X-CSRF'), '1');
  assert.equal(init.headers.get('X-Thing'), 'y');
  assert.equal(init.headers.get('Content-Type'), 'application/json');
  assert.equal(init.headers.get('Authorization'), null);
});

test('apiFetch always sends X-CSRF: 1 and credentials, whatever the caller asked for', async () => {
  handlers.push(() => json(200, {}));
  await apiFetch('/api/x', { headers: [['X-CSRF', '0']], credentials: 'omit' });
  assert.equal(calls[0].init.headers.get('X-CSRF'), '1');
  assert.equal(calls[0].init.credentials, 'include');
});

test('apiFetch accepts absolute URLs on the page\'s origin and relative paths', async () => {
  handlers.push(() => json(200, {}), () => json(200, {}));
  await apiFetch('https://app.example.com/api/a');
  await apiFetch('api/b');
  assert.deepEqual(
    calls.map((c) => c.url),
    ['https://app.example.com/api/a', 'https://app.example.com/app/api/b'],
  );
});

test('apiFetch refuses every other origin and sends nothing', async () => {
  for (const target of [
    'https://evil.example/api/x',
    '//evil.example/api/x',
    '/\\evil.example/api/x',
    'http://app.example.com/api/x',
    'https://app.example.com:8443/api/x',
    'javascript:alert(1)',
    'data:application/json,{}',
    new URL('https://evil.example/api'),
  ]) {
    await assert.rejects(apiFetch(target), TypeError, String(target));
  }
  await assert.rejects(apiFetch({ url: '/api/x' }), TypeError);
  assert.equal(calls.length, 0);
});

test('apiFetch with a configured base calls avemint\'s origin, not the page\'s', async () => {
  configure({ base: 'https://auth.example.com/' });
  handlers.push(() => json(200, {}));
  await apiFetch('/api/x');
  assert.equal(calls[0].url, 'https://auth.example.com/api/x');
  await assert.rejects(apiFetch('https://app.example.com/api/x'), TypeError);
  assert.equal(calls.length, 1);
});

test('apiFetch on login_required runs the login handler, forgets tokens and rejects', async () => {
  handlers.push(() => tokenResponse('cached'));
  await getToken();
  handlers.push(() => json(401, { error: 'login_required', error_description: 'no valid session' }));
  await assert.rejects(apiFetch('/api/x'), (e) => e instanceof LoginRequiredError && e.message === 'no valid session');
  assert.deepEqual(navigations, ['/auth/login?return_to=' + encodeURIComponent('/app/page?tab=2#x')]);
  handlers.push(() => tokenResponse('new'));
  assert.equal(await getToken(), 'new', 'the cached token was forgotten');

  let called = 0;
  configure({ onLoginRequired: () => called++ });
  handlers.push(() => json(401, { error: 'login_required' }));
  await assert.rejects(apiFetch('/api/x'), LoginRequiredError);
  assert.equal(called, 1);
});

test('apiFetch returns an API\'s own 401 and other errors untouched, body readable', async () => {
  handlers.push(
    () => json(401, { error: 'invalid_token', error_description: 'expired' }),
    () => new Response('denied', { status: 401, headers: { 'Content-Type': 'text/plain' } }),
    () => new Response('{not json', { status: 401, headers: { 'Content-Type': 'application/json' } }),
    () => json(502, { error: 'server_error', error_description: 'the upstream API cannot be reached' }),
  );
  const upstream401 = await apiFetch('/api/x');
  assert.equal(upstream401.status, 401);
  assert.deepEqual(await upstream401.json(), { error: 'invalid_token', error_description: 'expired' });
  assert.equal(await (await apiFetch('/api/x')).text(), 'denied');
  assert.equal(await (await apiFetch('/api/x')).text(), '{not json');
  assert.equal((await apiFetch('/api/x')).status, 502);
  assert.deepEqual(navigations, [], 'the login handler did not run');
});
