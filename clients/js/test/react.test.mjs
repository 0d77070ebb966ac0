// Tests for react.js (`avemint/react`) with Node's test runner: the session store the provider renders from, driven
// through a recording `fetch`, and the provider and hook rendered with react-dom/server (effects do not run there:
// the browser test drives them in a real page). Needs the devDependencies (`npm ci`).
import { test, beforeEach } from 'node:test';
import assert from 'node:assert/strict';

import { createElement } from 'react';
import { renderToString } from 'react-dom/server';

import { createSessionStore, SessionProvider, useSession } from '../react.js';
import { configure, TokenError, signOut, signIn, stopWatching, events, LOGGED_OUT_EVENT } from '../avemint.js';

// Another tab's copy of the helper (its own BroadcastChannel).
const tab2 = await import('../avemint.js?tab=2');

let calls;
let handlers;

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
}

globalThis.fetch = async (url, init = {}) => {
  calls.push({ url: String(url), init });
  const handler = handlers.shift();
  assert.ok(handler, `unexpected fetch of ${url}`);
  return handler();
};

const navigations = [];
globalThis.location = {
  href: 'https://app.example.com/',
  origin: 'https://app.example.com',
  pathname: '/',
  search: '',
  hash: '',
  assign: (url) => navigations.push(url),
};

const ada = { sub: 'u-ada', name: 'Ada', expires_at: 1796162862, expires_in: 3600 };

beforeEach(() => {
  calls = [];
  handlers = [];
  navigations.length = 0;
  stopWatching();
  configure({ base: '' });
});

/** Resolves on the store's next change. */
function nextChange(store) {
  return new Promise((resolve) => {
    const stop = store.subscribe(() => {
      stop();
      resolve(store.getSnapshot());
    });
  });
}

test('a new store is loading; refresh asks getUser and tells its subscribers', async () => {
  const store = createSessionStore();
  const first = store.getSnapshot();
  assert.deepEqual(first, { status: 'loading', user: null, error: null });
  let told = 0;
  const stop = store.subscribe(() => told++);
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  const after = await store.refresh();
  stop();
  assert.deepEqual(after, { status: 'authenticated', user: ada, error: null });
  assert.equal(store.getSnapshot(), after);
  assert.notEqual(after, first, 'a new snapshot object (what useSyncExternalStore compares)');
  assert.ok(Object.isFrozen(after));
  assert.equal(told, 1);
  assert.equal(calls[0].url, '/auth/session?optional=1');
});

test('signed out is unauthenticated, quietly; a failure is an error state with the TokenError', async () => {
  const store = createSessionStore();
  handlers.push(() => json(200, { authenticated: false }));
  assert.deepEqual(await store.refresh(), { status: 'unauthenticated', user: null, error: null });
  assert.deepEqual(navigations, []);
  handlers.push(() => json(503, { error: 'temporarily_unavailable', error_description: 'store down' }));
  const failed = await store.refresh();
  assert.equal(failed.status, 'error');
  assert.equal(failed.user, null);
  assert.ok(failed.error instanceof TokenError && failed.error.status === 503);
});

test('signing out turns a subscribed store unauthenticated; an unsubscribed one stops listening', async () => {
  const store = createSessionStore();
  const stop = store.subscribe(() => {});
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  await store.refresh();
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut();
  assert.equal(store.getSnapshot().status, 'unauthenticated');
  stop();

  handlers.push(() => json(200, { authenticated: true, ...ada }));
  await store.refresh();
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut();
  assert.equal(store.getSnapshot().status, 'authenticated', 'nobody subscribed: no event listener left behind');
});

test("another tab's logout reaches the store over the BroadcastChannel", async () => {
  const store = createSessionStore();
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  const stop = store.subscribe(() => {});
  await store.refresh();
  const changed = nextChange(store);
  handlers.push(() => new Response(null, { status: 204 }));
  await tab2.logout();
  assert.equal((await changed).status, 'unauthenticated');
  stop();
});

test('a logout while getUser is in flight wins over its (older) answer; the last of two refreshes wins', async () => {
  const store = createSessionStore();
  const stop = store.subscribe(() => {});
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  handlers.push(async () => {
    await gate;
    return json(200, { authenticated: true, ...ada });
  });
  const pending = store.refresh();
  handlers.push(() => new Response(null, { status: 204 }));
  await signOut();
  release();
  assert.equal((await pending).status, 'unauthenticated');

  let releaseFirst;
  const firstGate = new Promise((resolve) => (releaseFirst = resolve));
  handlers.push(async () => {
    await firstGate;
    return json(200, { authenticated: true, ...ada });
  });
  handlers.push(() => json(200, { authenticated: false }));
  const older = store.refresh();
  const newer = store.refresh();
  assert.equal((await newer).status, 'unauthenticated');
  releaseFirst();
  await older;
  assert.equal(store.getSnapshot().status, 'unauthenticated', 'the older answer does not overwrite the newer');
  stop();
});

test('watch: signed in, the store watches the session and turns unauthenticated when it ends by itself', async () => {
  const store = createSessionStore({ watch: true });
  const stop = store.subscribe(() => {});
  const reasons = [];
  const onEvent = (e) => reasons.push(e.detail.reason);
  events.addEventListener(LOGGED_OUT_EVENT, onEvent);
  try {
    handlers.push(() => json(200, { authenticated: true, ...ada }));
    handlers.push(() => json(200, { authenticated: true, ...ada, expires_in: 0.05 })); // watchSession's first look
    handlers.push(() => json(401, { error: 'login_required', error_description: 'session ended' })); // gone
    const ended = new Promise((resolve) => {
      const off = store.subscribe(() => {
        if (store.getSnapshot().status === 'unauthenticated') {
          off();
          resolve();
        }
      });
    });
    assert.equal((await store.refresh()).status, 'authenticated');
    await ended;
    assert.deepEqual(calls.map((c) => c.url), ['/auth/session?optional=1', '/auth/session', '/auth/session']);
    assert.deepEqual(reasons, ['expired']);
    assert.deepEqual(navigations, [], 'an ended session is shown, not redirected');
  } finally {
    events.removeEventListener(LOGGED_OUT_EVENT, onEvent);
    stop();
  }
});

test('without watch, or signed out, nothing watches the session', async () => {
  const plain = createSessionStore();
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  await plain.refresh();
  const watching = createSessionStore({ watch: true });
  handlers.push(() => json(200, { authenticated: false }));
  await watching.refresh();
  // watchSession would have asked at once (its first request goes out before refresh resolves).
  assert.deepEqual(calls.map((c) => c.url), ['/auth/session?optional=1', '/auth/session?optional=1']);
});

/** Renders what useSession() gives into text. */
function Probe() {
  const session = useSession();
  const functions = ['signIn', 'signOut', 'refresh'].filter((name) => typeof session[name] === 'function');
  return createElement('p', null, `${session.status}|${session.user === null}|${functions.join(',')}`);
}

test('SessionProvider renders loading on the server, with signIn, signOut and refresh, and fetches nothing', () => {
  const html = renderToString(createElement(SessionProvider, null, createElement(Probe)));
  assert.equal(html, '<p>loading|true|signIn,signOut,refresh</p>');
  assert.equal(calls.length, 0);
});

test('SessionProvider renders from a given store; useSession hands out the package functions', async () => {
  const store = createSessionStore();
  handlers.push(() => json(200, { authenticated: true, ...ada }));
  await store.refresh();
  let seen;
  function Grab() {
    seen = useSession();
    return null;
  }
  renderToString(createElement(SessionProvider, { store }, createElement(Grab)));
  // The server snapshot is always `loading`: what the client hydrates from before its first answer.
  assert.equal(seen.status, 'loading');
  assert.equal(seen.signIn, signIn);
  assert.equal(seen.refresh, store.refresh);
});

test('useSession outside a SessionProvider throws and says why', () => {
  assert.throws(() => renderToString(createElement(Probe)), /SessionProvider/);
});
