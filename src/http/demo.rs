//! The demo page: only mounted by `avemint demo`, never by `avemint serve`.
//!
//! A small page that shows the session user and calls the demo downstream API
//! (`GET /demo/api/hello`, see `demo_api`) both ways, side by side, under a
//! banner that says this is a demo:
//! - token in the page: an app JWT from the SPA helper (`getToken` from
//!   `/avemint.js`: `POST /auth/token` with `X-CSRF: 1`), its decoded claims,
//!   and the API called with `fetchWithToken`;
//! - proxied (proxy mode, the recommended way): `apiFetch('/api/demo/hello')`
//!   through the demo's route `/api/demo` (set up by `avemint demo`), where
//!   avemint attaches the app JWT on the server and the page never holds one.
//!
//! Below them, a "Your sessions" panel lists the user's sessions (`sessions()`)
//! with an "end" button each (`endSession`) and "end all others"
//! (`logout({ scope: 'others' })`); the page listens for `avemint:logged-out`
//! (from this tab, another tab over the helper's BroadcastChannel, or the
//! session's end seen by `watchSession`) and shows the signed-out view.

use poem::Response;
use poem::http::header;

use avemint_base::route::Route;

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>avemint demo</title>
<link rel="stylesheet" href="/demo.css">
<script type="module" src="/demo.js"></script>
</head>
<body>
<div class="banner" id="demo-banner">DEMO MODE: signed in against a local Ave emulator, not the real Ave. Do not use in production.</div>
<main>
<h1>avemint</h1>
<section id="signed-out" hidden>
<p>You are not signed in.</p>
<p><a class="button" id="sign-in" href="/auth/login?return_to=/">Sign in with Ave</a></p>
</section>
<section id="signed-in" hidden>
<p>Signed in as <strong id="user-name"></strong> <span id="user-email"></span> <button id="sign-out" type="button">Sign out</button></p>
<div class="ways">
<section class="way" id="token-way">
<h2>Token in the page</h2>
<p class="note">The page asks <code>POST /auth/token</code> for an app JWT (<code>getToken</code>) and sends it to the API itself (<code>fetchWithToken('/demo/api/hello')</code>): script on the page can read the token.</p>
<p><button id="get-token" type="button">Get an app JWT</button> <button id="call-api" type="button">Call the demo API with it</button></p>
<h3>App JWT claims</h3>
<pre id="claims">(none yet)</pre>
<h3>Demo API answer</h3>
<pre id="api-answer">(not called yet)</pre>
</section>
<section class="way" id="proxy-way">
<h2>Proxied (recommended)</h2>
<p class="note">The page calls <code>apiFetch('/api/demo/hello')</code> with its session cookie only; avemint forwards it to the demo API with the app JWT attached on the server. No token ever reaches the page.</p>
<p><button id="call-proxied" type="button">Call the demo API through avemint</button></p>
<h3>Demo API answer</h3>
<pre id="proxied-answer">(not called yet)</pre>
</section>
</div>
<section id="sessions-panel">
<h2>Your sessions</h2>
<p><button id="refresh-sessions" type="button">Refresh</button> <button id="end-others" type="button">End all others</button></p>
<table id="sessions"><thead><tr><th>Device</th><th>Network</th><th>Created</th><th>Last seen</th><th></th></tr></thead><tbody></tbody></table>
</section>
</section>
<p id="error" class="error" hidden></p>
<p class="links"><a href="/docs">API docs</a> · <a href="/.well-known/jwks.json">JWKS</a> · <a href="/.well-known/openid-configuration">discovery</a></p>
</main>
</body>
</html>
"#;

const SCRIPT: &str = r#"import { apiFetch, getToken, fetchWithToken, configure, events, getUser, sessions, endSession, logout, watchSession } from '/avemint.js';

const $ = (id) => document.getElementById(id);
function showError(text) { const e = $('error'); e.textContent = text; e.hidden = false; }
function decodeClaims(jwt) {
  const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
  const padded = part + '='.repeat((4 - part.length % 4) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}
// Logged out (here, in another tab, or the session ended): show it, no reload, no redirect.
configure({ onLoginRequired: () => {} });
function showSignedOut(reason) {
  $('signed-in').hidden = true;
  $('signed-out').hidden = false;
  $('signed-out').dataset.reason = reason;
}
events.addEventListener('avemint:logged-out', (e) => showSignedOut(e.detail.reason));
async function load() {
  // Quiet: signed out is `null`, not a 401 (GET /auth/session?optional=1).
  let s;
  try { s = await getUser(); } catch (e) { showError('session check failed: ' + e.message); return; }
  if (!s) { showSignedOut('login_required'); return; }
  $('user-name').textContent = s.name || s.preferred_username || s.sub;
  $('user-email').textContent = s.email ? '(' + s.email + ')' : '';
  $('signed-in').hidden = false;
  await showSessions();
  watchSession().catch(() => {});
}
const when = (t) => new Date(t * 1000).toLocaleString();
async function showSessions() {
  const body = $('sessions').tBodies[0];
  body.replaceChildren();
  for (const s of await sessions()) {
    const row = body.insertRow();
    row.dataset.id = s.id;
    if (s.current) row.className = 'current';
    for (const text of [s.device || 'unknown device', s.network || 'unknown network', when(s.created_at), when(s.last_seen_at)]) {
      row.insertCell().textContent = text;
    }
    const last = row.insertCell();
    if (s.current) {
      last.textContent = 'this one';
    } else {
      const end = document.createElement('button');
      end.type = 'button';
      end.className = 'end-session';
      end.textContent = 'End';
      end.addEventListener('click', guarded(async () => { await endSession(s.id); await showSessions(); }));
      last.append(end);
    }
  }
}
async function showToken() {
  const token = await getToken();
  $('claims').textContent = JSON.stringify(decodeClaims(token), null, 2);
}
async function callApi() {
  const r = await fetchWithToken('/demo/api/hello');
  const body = await r.json();
  if (!r.ok) { showError(body.error + ': ' + body.error_description); return; }
  $('api-answer').textContent = JSON.stringify(body, null, 2);
}
async function callProxied() {
  const r = await apiFetch('/api/demo/hello');
  const body = await r.json();
  if (!r.ok) { showError(body.error + ': ' + body.error_description); return; }
  $('proxied-answer').textContent = JSON.stringify(body, null, 2);
}
async function signOut() {
  await logout();
}
async function endOthers() {
  await logout({ scope: 'others' });
  await showSessions();
}
function guarded(f) { return () => f().catch((e) => showError(String(e.message || e))); }
$('get-token').addEventListener('click', guarded(showToken));
$('call-api').addEventListener('click', guarded(callApi));
$('call-proxied').addEventListener('click', guarded(callProxied));
$('sign-out').addEventListener('click', guarded(signOut));
$('refresh-sessions').addEventListener('click', guarded(showSessions));
$('end-others').addEventListener('click', guarded(endOthers));
guarded(load)();
"#;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}\
.banner{background:#b91c1c;color:#fff;padding:.6em 1em;font-weight:600;text-align:center}\
main{max-width:64em;margin:2em auto;padding:0 1em}\
.button,button{display:inline-block;background:#1d4ed8;color:#fff;border:0;border-radius:.3em;padding:.5em 1em;text-decoration:none;font:inherit;cursor:pointer}\
pre{background:#fff;border:1px solid #ddd;padding:1em;overflow:auto}\
.ways{display:flex;flex-wrap:wrap;gap:1.5em}.way{flex:1 1 20em;min-width:0}.note{font-size:.9em;color:#555}.error{color:#b91c1c}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}tr.current{font-weight:600}.links{margin-top:3em;font-size:.9em}";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
}

/// The demo page, its assets and `GET /demo/api/hello`; `None` for any other request.
pub(crate) fn handle(req: &poem::Request) -> Option<Response> {
    Some(match Route::of(req.uri().path()) {
        Some(Route::Root) => asset("text/html; charset=utf-8", PAGE),
        Some(Route::DemoScript) => asset("text/javascript; charset=utf-8", SCRIPT),
        Some(Route::DemoStyle) => asset("text/css; charset=utf-8", STYLE),
        Some(Route::DemoApi) if req.method() == poem::http::Method::GET => super::demo_api::hello(req),
        _ => return None,
    })
}
