// Tests for avemint.js (the package's main entry, served by avemint at /avemint.js) with Node's built-in test runner
// (`node --test`, `npm test`), run by tests/spa_helper.rs. `fetch` and `location` are replaced by recording stubs; nothing else is faked.
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
  sessions,
  endSession,
  logout,
  session,
  watchSession,
  stopWatching,
  events,
  CHANNEL_NAME,
  LOGGED_OUT_EVENT,
  getUser,
  signIn,
  signOut,
  PROMPTS,
} from '../avemint.js';

// A second, independent instance of the module: another "tab" (its own token cache and BroadcastChannel).
const tab2 = await import('../avemint.js?tab=2');

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
  stopWatching();
  configure({ base: '', onLoginRequired: redirectToLogin });
  tab2.clearTokens();
  tab2.configure({ base: '', onLoginRequired: () => {} });
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

test("getToken tells a profile page script may not mint, and a missing token endpoint, by code and cause", async () => {
  handlers.push(() => json(403, { error: 'invalid_target', error_description: 'no token profile page script may mint' }));
  await assert.rejects(getToken({ profile: 'orders' }), (e) => e instanceof TokenError && e.status === 403
    && e.error === 'invalid_target' && e.message.startsWith('invalid_target: ') && e.message.includes('{"profile":"orders"}')
    && e.message.includes('apiFetch'));
  handlers.push(() => json(404, { error: 'not_found', error_description: 'no such path' }));
  await assert.rejects(getToken(), (e) => e instanceof TokenError && e.status === 404 && e.error === 'not_found'
    && e.message.includes('AVEMINT_TOKEN_ENDPOINT=off'));
  assert.equal(navigations.length, 0, 'no sign-in redirect for a refusal');
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

// ---- sessions, logout, the logged-out event, cross-tab sync ----

/** Records the logged-out events an EventTarget dispatches until `stop()`. */
function recordEvents(target) {
  const seen = [];
  const listener = (event) => seen.push(event);
  target.addEventListener(LOGGED_OUT_EVENT, listener);
  return { seen, stop: () => target.removeEventListener(LOGGED_OUT_EVENT, listener) };
}

/** The next logged-out event on `target`, or a rejection after `ms`. */
function nextEvent(target, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no logged-out event')), ms);
    target.addEventListener(
      LOGGED_OUT_EVENT,
      (event) => {
        clearTimeout(timer);
        resolve(event);
      },
      { once: true },
    );
  });
}

const listing = [
  { id: 'sid-this', created_at: 1795558062, last_seen_at: 1795558062, expires_at: 1796162862, device: 'Firefox on Linux', network: '198.51.100.0/24', current: true },
  { id: 'sid-other', created_at: 1795550000, last_seen_at: 1795551000, expires_at: 1796160000, current: false },
];

test('sessions GETs /auth/sessions with X-CSRF and credentials and returns the list', async () => {
  handlers.push(() => json(200, { sessions: listing }));
  assert.deepEqual(await sessions(), listing);
  const { url, init } = calls[0];
  assert.equal(url, '/auth/sessions');
  assert.equal(init.method, 'GET');
  assert.equal(init.credentials, 'include');
  assert.equal(init.headers['X-CSRF'], '1');
  assert.equal(init.body, undefined);
});

test('sessions on login_required fires the event with reason login_required, runs the handler and rejects', async () => {
  let called = 0;
  configure({ onLoginRequired: () => called++ });
  const rec = recordEvents(events);
  handlers.push(() => json(401, { error: 'login_required', error_description: 'no session' }));
  await assert.rejects(sessions(), LoginRequiredError);
  rec.stop();
  assert.equal(called, 1);
  assert.equal(rec.seen.length, 1);
  assert.ok(rec.seen[0] instanceof CustomEvent);
  assert.equal(rec.seen[0].detail.reason, 'login_required');
});

test('every helper call that gets login_required fires the event: getToken, fetchWithToken, apiFetch', async () => {
  configure({ onLoginRequired: () => {} });
  const rec = recordEvents(events);
  const refused = () => json(401, { error: 'login_required', error_description: 'no session' });
  handlers.push(refused);
  await assert.rejects(getToken(), LoginRequiredError);
  handlers.push(refused);
  await assert.rejects(fetchWithToken('https://api.example.com/x'), LoginRequiredError);
  handlers.push(refused);
  await assert.rejects(apiFetch('/api/x'), LoginRequiredError);
  rec.stop();
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['login_required', 'login_required', 'login_required']);
});

test('endSession DELETEs /auth/sessions/{id} (encoded) and does not log this tab out for another session', async () => {
  handlers.push(() => json(200, { sessions: listing }));
  await sessions();
  const rec = recordEvents(events);
  handlers.push(() => new Response(null, { status: 204 }));
  await endSession('sid-other');
  handlers.push(() => new Response(null, { status: 204 }));
  await endSession('a/b');
  rec.stop();
  assert.equal(calls[1].url, '/auth/sessions/sid-other');
  assert.equal(calls[1].init.method, 'DELETE');
  assert.equal(calls[1].init.headers['X-CSRF'], '1');
  assert.equal(calls[2].url, '/auth/sessions/a%2Fb');
  assert.equal(rec.seen.length, 0);
});

test('endSession of the current session logs out; a 404 rejects with TokenError', async () => {
  handlers.push(() => json(200, { sessions: listing }));
  await sessions();
  handlers.push(() => tokenResponse('jwt-before'));
  await getToken();
  const rec = recordEvents(events);
  handlers.push(() => new Response(null, { status: 204 }));
  await endSession('sid-this');
  rec.stop();
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['logout']);
  handlers.push(() => tokenResponse('jwt-after'));
  assert.equal(await getToken(), 'jwt-after', 'the token cache was cleared');
  handlers.push(() => json(404, { error: 'not_found', error_description: 'no such session' }));
  await assert.rejects(endSession('gone'), (e) => e instanceof TokenError && e.status === 404 && e.error === 'not_found');
  await assert.rejects(endSession(''), TypeError);
});

test('logout() POSTs /auth/logout without a body, clears tokens and fires reason logout without the login handler', async () => {
  let called = 0;
  configure({ onLoginRequired: () => called++ });
  handlers.push(() => tokenResponse('jwt-1'));
  await getToken();
  const rec = recordEvents(events);
  handlers.push(() => new Response(null, { status: 204 }));
  await logout();
  rec.stop();
  const { url, init } = calls[1];
  assert.equal(url, '/auth/logout');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers['X-CSRF'], '1');
  assert.equal(init.body, undefined);
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['logout']);
  assert.equal(called, 0);
  handlers.push(() => tokenResponse('jwt-2'));
  assert.equal(await getToken(), 'jwt-2');
});

test('logout scopes: others keeps this tab signed in, all logs out, another scope is refused before sending', async () => {
  const rec = recordEvents(events);
  handlers.push(() => new Response(null, { status: 204 }));
  await logout({ scope: 'others' });
  assert.deepEqual(JSON.parse(calls[0].init.body), { scope: 'others' });
  assert.equal(calls[0].init.headers['Content-Type'], 'application/json');
  assert.equal(rec.seen.length, 0);
  handlers.push(() => new Response(null, { status: 204 }));
  await logout({ scope: 'all' });
  assert.deepEqual(JSON.parse(calls[1].init.body), { scope: 'all' });
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['logout']);
  await assert.rejects(logout({ scope: 'everyone' }), TypeError);
  assert.equal(calls.length, 2);
  rec.stop();
});

test('session() returns GET /auth/session', async () => {
  handlers.push(() => json(200, { sub: 'u1', expires_at: 1796162862, expires_in: 3600 }));
  assert.equal((await session()).expires_in, 3600);
  assert.equal(calls[0].url, '/auth/session');
  assert.equal(calls[0].init.headers['X-CSRF'], '1');
});

test('watchSession fires reason expired when expires_in runs out and the session is gone', async () => {
  const rec = recordEvents(events);
  handlers.push(() => json(200, { sub: 'u1', expires_in: 0.05 }));
  handlers.push(() => json(200, { sub: 'u1', expires_in: 0.05 })); // the idle end moved: still signed in
  handlers.push(() => json(401, { error: 'login_required', error_description: 'session ended' }));
  const expired = nextEvent(events);
  assert.equal((await watchSession()).sub, 'u1');
  assert.equal(rec.seen.length, 0);
  const event = await expired;
  rec.stop();
  assert.equal(event.detail.reason, 'expired');
  assert.equal(calls.length, 3);
  assert.ok(calls.every((c) => c.url === '/auth/session'));
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['expired']);
});

test('watchSession with expires_in 0 fires expired at once; stopWatching stops the timer', async () => {
  const rec = recordEvents(events);
  handlers.push(() => json(200, { sub: 'u1', expires_in: 0 }));
  await assert.rejects(watchSession(), LoginRequiredError);
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['expired']);
  handlers.push(() => json(200, { sub: 'u1', expires_in: 0.02 }));
  await watchSession();
  stopWatching();
  await new Promise((r) => setTimeout(r, 60));
  assert.equal(calls.length, 2, 'no check after stopWatching');
  rec.stop();
});

test('cross-tab: a logout in one tab clears the other tab\'s tokens and fires its own event', async () => {
  handlers.push(() => tokenResponse('tab2-jwt-1'));
  assert.equal(await tab2.getToken(), 'tab2-jwt-1');
  const here = recordEvents(events);
  const there = nextEvent(tab2.events);
  handlers.push(() => new Response(null, { status: 204 }));
  await logout();
  const event = await there;
  here.stop();
  assert.equal(event.detail.reason, 'logout');
  assert.equal(here.seen.length, 1, 'the news does not echo back to the tab that sent it');
  handlers.push(() => tokenResponse('tab2-jwt-2'));
  assert.equal(await tab2.getToken(), 'tab2-jwt-2', 'the other tab forgot its token');
});

test('cross-tab: login_required in one tab reaches the other with its reason, and no token goes over the channel', async () => {
  const spy = new BroadcastChannel(CHANNEL_NAME);
  const messages = [];
  spy.onmessage = ({ data }) => messages.push(data);
  try {
    handlers.push(() => tokenResponse('secret-jwt'));
    await getToken();
    const there = nextEvent(tab2.events);
    configure({ onLoginRequired: () => {} });
    handlers.push(() => json(401, { error: 'login_required', error_description: 'no session' }));
    await assert.rejects(apiFetch('/api/x'), LoginRequiredError);
    assert.equal((await there).detail.reason, 'login_required');
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(messages, [{ type: 'logged-out', reason: 'login_required' }]);
    assert.ok(!JSON.stringify(messages).includes('secret-jwt'));
  } finally {
    spy.close();
  }
});

test('cross-tab: a message that is not a logged-out event with a known reason is ignored', async () => {
  const spy = new BroadcastChannel(CHANNEL_NAME);
  const rec = recordEvents(tab2.events);
  try {
    spy.postMessage({ type: 'logged-out', reason: 'whatever' });
    spy.postMessage({ type: 'token', token: 'x' });
    spy.postMessage('logged-out');
    spy.postMessage({ type: 'logged-out', reason: 'expired' });
    await nextEvent(tab2.events);
    assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['expired']);
  } finally {
    rec.stop();
    spy.close();
  }
});

// ---- getUser, signIn, signOut ----

const ada = { sub: 'u-ada', name: 'Ada', email: 'ada@example.com', expires_at: 1796162862, expires_in: 3600 };

test('getUser asks GET /auth/session?optional=1 with X-CSRF and credentials and returns the user', async () => {
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  assert.deepEqual(await getUser(), ada, 'the user, without the authenticated flag');
  assert.equal(calls.length, 1);
  const { url, init } = calls[0];
  assert.equal(url, '/auth/session?optional=1');
  assert.equal(init.method, 'GET');
  assert.equal(init.credentials, 'include');
  assert.equal(init.headers['X-CSRF'], '1');
  assert.equal(init.body, undefined);
});

test('getUser signed out resolves to null quietly: no redirect, no handler, no event, no broadcast', async () => {
  // Channel messages the tests above posted are still being delivered to this module: let them arrive first.
  await new Promise((r) => setTimeout(r, 20));
  let called = 0;
  configure({ onLoginRequired: () => called++ });
  const spy = new BroadcastChannel(CHANNEL_NAME);
  const messages = [];
  spy.onmessage = ({ data }) => messages.push(data);
  const here = recordEvents(events);
  const there = recordEvents(tab2.events);
  try {
    handlers.push(() => json(200, { authenticated: false }));
    assert.equal(await getUser(), null);
    // An avemint without `optional=1` answers 401 login_required: still null, still quiet.
    handlers.push(() => json(401, { error: 'login_required', error_description: 'no valid session' }));
    assert.equal(await getUser(), null);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(called, 0);
    assert.deepEqual(navigations, []);
    assert.equal(here.seen.length, 0);
    assert.equal(there.seen.length, 0);
    assert.deepEqual(messages, []);
  } finally {
    here.stop();
    there.stop();
    spy.close();
  }
});

test('getUser keeps cached tokens when signed out (it changes nothing) and uses a configured base', async () => {
  handlers.push(() => tokenResponse('kept'));
  await getToken();
  handlers.push(() => json(200, { authenticated: false }));
  assert.equal(await getUser(), null);
  assert.equal(await getToken(), 'kept');
  configure({ base: 'https://auth.example.com/' });
  handlers.push(() => json(200, { authenticated: false }));
  await getUser();
  assert.equal(calls.at(-1).url, 'https://auth.example.com/auth/session?optional=1');
});

test('getUser rejects with TokenError when avemint cannot answer or answers nonsense', async () => {
  handlers.push(() => json(503, { error: 'temporarily_unavailable', error_description: 'store down' }));
  await assert.rejects(getUser(), (e) => e instanceof TokenError && e.status === 503 && e.error === 'temporarily_unavailable');
  handlers.push(() => json(403, { error: 'invalid_request', error_description: 'cross-origin' }));
  await assert.rejects(getUser(), (e) => e instanceof TokenError && e.status === 403);
  handlers.push(() => json(200, { hello: 'world' }));
  await assert.rejects(getUser(), (e) => e instanceof TokenError && e.error === 'invalid_response');
  handlers.push(() => new Response('<html>', { status: 200, headers: { 'Content-Type': 'text/html' } }));
  await assert.rejects(getUser(), (e) => e instanceof TokenError && e.error === 'invalid_response');
  assert.deepEqual(navigations, []);
});

test('signIn navigates to /auth/login with the current page, or returnTo, and the prompt', () => {
  signIn();
  signIn({ returnTo: '/orders?id=7#top' });
  signIn({ returnTo: '/', prompt: 'select_account' });
  signIn({ prompt: 'consent' });
  configure({ base: 'https://auth.example.com' });
  signIn({ returnTo: '/a b' });
  assert.deepEqual(navigations, [
    '/auth/login?return_to=' + encodeURIComponent('/app/page?tab=2#x'),
    '/auth/login?return_to=' + encodeURIComponent('/orders?id=7#top'),
    '/auth/login?return_to=%2F&prompt=select_account',
    '/auth/login?return_to=' + encodeURIComponent('/app/page?tab=2#x') + '&prompt=consent',
    'https://auth.example.com/auth/login?return_to=%2Fa%20b',
  ]);
  assert.deepEqual(PROMPTS, ['select_account', 'consent']);
});

test('signIn refuses an unknown prompt or a returnTo that is not a string, and goes nowhere', () => {
  for (const prompt of ['none', 'login', 'select_account consent', '', 'SELECT_ACCOUNT']) {
    assert.throws(() => signIn({ prompt }), TypeError, prompt);
  }
  assert.throws(() => signIn({ returnTo: 42 }), TypeError);
  assert.throws(() => signIn({ returnTo: { path: '/' } }), TypeError);
  assert.deepEqual(navigations, []);
});

test('signOut is logout: POST /auth/logout, scopes, the logged-out event, an unknown scope refused', async () => {
  const rec = recordEvents(events);
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut();
  assert.equal(calls[0].url, '/auth/logout');
  assert.equal(calls[0].init.method, 'POST');
  assert.equal(calls[0].init.headers['X-CSRF'], '1');
  assert.equal(calls[0].init.body, undefined);
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut({ scope: 'others' });
  assert.deepEqual(JSON.parse(calls[1].init.body), { scope: 'others' });
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut({ scope: 'all' });
  assert.deepEqual(JSON.parse(calls[2].init.body), { scope: 'all' });
  await assert.rejects(signOut({ scope: 'everyone' }), TypeError);
  assert.equal(calls.length, 3);
  rec.stop();
  assert.deepEqual(rec.seen.map((e) => e.detail.reason), ['logout', 'logout']);
});
