//! avemint's two cookies as browsers really send them, black-box over HTTP:
//! found by their exact raw name only (a percent-encoded look-alike planted by
//! a sibling subdomain never counts, in either order), a malformed or non-ASCII
//! crumb hides nothing, a long `return_to` never makes the login cookie the
//! reason a request is refused, and error responses carry their cookie changes.
//! Also the smaller items found beside them: no profile oracle without a
//! session, `HEAD /avemint.js`.

mod support;

use std::time::Duration;

use ave_emulator::EmulatorConfig;
use avemint_core::session::RenewalSettings;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, COOKIE, HeaderValue, SET_COOKIE};
use serde_json::{Value, json};
use support::{LOGIN_COOKIE, Options, SESSION_COOKIE, TestApp, error_code, location};

/// The look-alike spellings of each cookie name that poem's jar used to decode to the genuine name.
fn look_alikes(genuine: &str) -> Vec<String> {
    let rest = genuine.strip_prefix("__Host-").expect("a __Host- name");
    vec![
        format!("__Host%2D{rest}"),
        format!("%5F%5FHost-{rest}"),
        format!("__%48ost-{rest}"),
    ]
}

/// Sends `req` with exactly this `Cookie` header (raw bytes, in this order).
async fn send_with(req: reqwest::RequestBuilder, cookie: &[u8]) -> reqwest::Response {
    let value = HeaderValue::from_bytes(cookie).expect("header value");
    req.header(COOKIE, value).send().await.expect("request")
}

/// The value a response sets for `name` (`Some("")` when it expires it).
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let raw = v.to_str().expect("ascii");
        let (pair, _) = raw.split_once(';').unwrap_or((raw, ""));
        let (n, value) = pair.split_once('=')?;
        (n.trim() == name).then(|| value.trim().to_owned())
    })
}

/// The whole `Set-Cookie` line for `name`.
fn set_cookie_line(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .find(|raw| raw.split_once('=').is_some_and(|(n, _)| n.trim() == name))
}

/// Asserts that `resp` expires cookie `name` with the attributes browsers need to match it.
fn assert_expires(resp: &reqwest::Response, name: &str) {
    let line = set_cookie_line(resp, name).unwrap_or_else(|| panic!("{} expires {name}", resp.status()));
    let lower = line.to_ascii_lowercase();
    assert!(line.starts_with(&format!("{name}=;")), "{line}");
    for attr in ["max-age=0", "path=/", "secure", "httponly", "samesite=lax"] {
        assert!(lower.contains(attr), "{attr} in {line}");
    }
}

/// `GET /auth/login` with this raw `Cookie` header; returns (authorize URL, login cookie value).
async fn login_with(app: &TestApp, cookie: &[u8], return_to: Option<&str>) -> (String, String) {
    let mut req = app.http.get(app.url("/auth/login"));
    if let Some(r) = return_to {
        req = req.query(&[("return_to", r)]);
    }
    let resp = send_with(req, cookie).await;
    assert_eq!(resp.status(), 302, "login redirects");
    let login = set_cookie(&resp, LOGIN_COOKIE).expect("login cookie set");
    (location(&resp), login)
}

/// Approves at the emulator as user `user`; returns the callback URL.
async fn approve_as(app: &TestApp, authorize_url: &str, user: usize) -> String {
    app.emulator
        .set_auto_approve(Some(app.emulator.users()[user].id.clone()));
    let resp = app.http.get(authorize_url).send().await.expect("ave signin");
    assert_eq!(resp.status(), 302, "emulator approves");
    location(&resp)
}

/// Signs in as emulator user `user`; returns the session cookie value.
async fn session_of(app: &TestApp, user: usize) -> String {
    let (authorize, login) = login_with(app, b"x=1", None).await;
    let callback = approve_as(app, &authorize, user).await;
    let resp = send_with(app.http.get(callback), format!("{LOGIN_COOKIE}={login}").as_bytes()).await;
    assert_eq!(resp.status(), 302, "callback succeeds");
    set_cookie(&resp, SESSION_COOKIE)
        .filter(|v| !v.is_empty())
        .expect("session cookie")
}

/// `GET /auth/session` with this raw `Cookie` header: `Some(sub)` when signed in, `None` on 401.
async fn whoami(app: &TestApp, cookie: &[u8]) -> Option<String> {
    let resp = send_with(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"), cookie).await;
    match resp.status().as_u16() {
        200 => Some(
            resp.json::<Value>().await.expect("json")["sub"]
                .as_str()
                .expect("sub")
                .to_owned(),
        ),
        401 => None,
        other => panic!("unexpected status {other}"),
    }
}

/// `POST /auth/token` with this raw `Cookie` header: `Some(sub of the minted token)` or `None` on 401.
async fn token_sub(app: &TestApp, cookie: &[u8]) -> Option<String> {
    let resp = send_with(app.http.post(app.url("/auth/token")).header("X-CSRF", "1"), cookie).await;
    match resp.status().as_u16() {
        200 => {
            let body: Value = resp.json().await.expect("json");
            let token = body["access_token"].as_str().expect("token");
            Some(app.verify(token).await.claims["sub"].as_str().expect("sub").to_owned())
        }
        401 => None,
        other => panic!("unexpected status {other}"),
    }
}

fn sub(app: &TestApp, user: usize) -> String {
    app.emulator.users()[user].id.clone()
}

/// Both orders of a look-alike crumb and the genuine one.
fn both_orders(look_alike: &str, genuine: &str) -> [String; 2] {
    [format!("{look_alike}; {genuine}"), format!("{genuine}; {look_alike}")]
}

#[tokio::test]
async fn a_look_alike_session_cookie_never_shadows_or_replaces_the_genuine_one() {
    let app = TestApp::spawn().await;
    let victim = session_of(&app, 0).await;
    let attacker = session_of(&app, 1).await;
    for name in look_alikes(SESSION_COOKIE) {
        let tossed = format!("{name}={attacker}");
        // Alone, a look-alike is no session at all.
        assert_eq!(whoami(&app, tossed.as_bytes()).await, None, "{tossed}");
        assert_eq!(token_sub(&app, tossed.as_bytes()).await, None, "{tossed}");
        for cookie in both_orders(&tossed, &format!("{SESSION_COOKIE}={victim}")) {
            assert_eq!(whoami(&app, cookie.as_bytes()).await, Some(sub(&app, 0)), "{cookie}");
            assert_eq!(token_sub(&app, cookie.as_bytes()).await, Some(sub(&app, 0)), "{cookie}");
        }
        // A garbage look-alike sent first does not lock the user out either.
        for cookie in both_orders(&format!("{name}=garbage"), &format!("{SESSION_COOKIE}={victim}")) {
            assert_eq!(whoami(&app, cookie.as_bytes()).await, Some(sub(&app, 0)), "{cookie}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_tossed_login_cookie_cannot_sign_the_victim_in_as_the_attacker() {
    let app = TestApp::spawn().await;
    for name in look_alikes(LOGIN_COOKIE) {
        // The victim holds nothing but the attacker's tossed login cookie.
        let (authorize, attacker_login) = login_with(&app, b"a=1", None).await;
        let callback = approve_as(&app, &authorize, 1).await;
        let resp = send_with(app.http.get(&callback), format!("{name}={attacker_login}").as_bytes()).await;
        assert_eq!(resp.status(), 400, "{name}: the attacker's sign-in is refused");
        assert_eq!(set_cookie(&resp, SESSION_COOKIE), None, "{name}: no session cookie");
        assert_eq!(error_code(resp).await, "invalid_request");

        // The victim has started a sign-in of its own: the look-alike, first or last, changes nothing.
        for order in 0..2 {
            let (authorize, attacker_login) = login_with(&app, b"a=1", None).await;
            let attacker_callback = approve_as(&app, &authorize, 1).await;
            let (_, victim_login) = login_with(&app, b"v=1", None).await;
            let tossed = format!("{name}={attacker_login}");
            let genuine = format!("{LOGIN_COOKIE}={victim_login}");
            let cookie = both_orders(&tossed, &genuine)[order].clone();
            let resp = send_with(app.http.get(&attacker_callback), cookie.as_bytes()).await;
            assert_eq!(resp.status(), 400, "{cookie}: the attacker's callback is refused");
            assert_eq!(set_cookie(&resp, SESSION_COOKIE), None, "{cookie}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_genuine_login_cookie_signs_in_whatever_look_alike_comes_first() {
    let app = TestApp::spawn().await;
    for name in look_alikes(LOGIN_COOKIE) {
        for order in 0..2 {
            let (_, attacker_login) = login_with(&app, b"a=1", None).await;
            let (authorize, victim_login) = login_with(&app, b"v=1", None).await;
            let callback = approve_as(&app, &authorize, 0).await;
            let cookie = both_orders(
                &format!("{name}={attacker_login}"),
                &format!("{LOGIN_COOKIE}={victim_login}"),
            )[order]
                .clone();
            let resp = send_with(app.http.get(&callback), cookie.as_bytes()).await;
            assert_eq!(resp.status(), 302, "{cookie}");
            let session = set_cookie(&resp, SESSION_COOKIE).expect("session cookie");
            assert_expires(&resp, LOGIN_COOKIE);
            let me = format!("{SESSION_COOKIE}={session}");
            assert_eq!(whoami(&app, me.as_bytes()).await, Some(sub(&app, 0)));
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn logout_and_a_new_sign_in_act_on_the_genuine_cookie_only() {
    let app = TestApp::spawn().await;
    for name in look_alikes(SESSION_COOKIE) {
        for order in 0..2 {
            let victim = session_of(&app, 0).await;
            let attacker = session_of(&app, 1).await;
            let tossed = format!("{name}={attacker}");
            let genuine_attacker = format!("{SESSION_COOKIE}={attacker}");

            // Logout with both: the genuine session ends and its cookie is expired...
            let cookie = both_orders(&tossed, &format!("{SESSION_COOKIE}={victim}"))[order].clone();
            let resp = send_with(
                app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"),
                cookie.as_bytes(),
            )
            .await;
            assert_eq!(resp.status(), 204, "{cookie}");
            assert_expires(&resp, SESSION_COOKIE);
            assert_eq!(
                whoami(&app, format!("{SESSION_COOKIE}={victim}").as_bytes()).await,
                None
            );
            // ...the look-alike was not acted on (its session is untouched)...
            assert_eq!(whoami(&app, genuine_attacker.as_bytes()).await, Some(sub(&app, 1)));
            // ...and what the browser still sends, the look-alike alone, is no session.
            assert_eq!(whoami(&app, tossed.as_bytes()).await, None, "{tossed}");

            // A new sign-in with the look-alike and an old genuine session around.
            let old = session_of(&app, 0).await;
            let (authorize, login) = login_with(&app, tossed.as_bytes(), None).await;
            let callback = approve_as(&app, &authorize, 0).await;
            let cookie = match order {
                0 => format!("{tossed}; {SESSION_COOKIE}={old}; {LOGIN_COOKIE}={login}"),
                _ => format!("{LOGIN_COOKIE}={login}; {SESSION_COOKIE}={old}; {tossed}"),
            };
            let resp = send_with(app.http.get(&callback), cookie.as_bytes()).await;
            assert_eq!(resp.status(), 302, "{cookie}");
            let new = set_cookie(&resp, SESSION_COOKIE).expect("session cookie");
            // The old genuine session is gone, the look-alike's is not, and the new one is the victim's.
            assert_eq!(whoami(&app, format!("{SESSION_COOKIE}={old}").as_bytes()).await, None);
            assert_eq!(whoami(&app, genuine_attacker.as_bytes()).await, Some(sub(&app, 1)));
            for cookie in both_orders(&tossed, &format!("{SESSION_COOKIE}={new}")) {
                assert_eq!(whoami(&app, cookie.as_bytes()).await, Some(sub(&app, 0)), "{cookie}");
            }
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_non_ascii_cookie_hides_no_other_cookie() {
    let app = TestApp::spawn().await;
    let session = session_of(&app, 0).await;
    let genuine = format!("{SESSION_COOKIE}={session}");
    // `pref=é` as a browser sends it: raw UTF-8 bytes.
    let mut first = b"pref=\xc3\xa9; ".to_vec();
    first.extend_from_slice(genuine.as_bytes());
    let mut last = genuine.clone().into_bytes();
    last.extend_from_slice(b"; pref=\xc3\xa9");
    let mut malformed = b"junk; =nameless; \xff\xfe=\x80\t; ".to_vec();
    malformed.extend_from_slice(genuine.as_bytes());
    for cookie in [&first, &last, &malformed] {
        assert_eq!(
            whoami(&app, cookie).await,
            Some(sub(&app, 0)),
            "{}",
            String::from_utf8_lossy(cookie)
        );
        assert_eq!(token_sub(&app, cookie).await, Some(sub(&app, 0)));
    }

    // And signing in works with the crumb around.
    let (authorize, login) = login_with(&app, b"pref=\xc3\xa9", None).await;
    let callback = approve_as(&app, &authorize, 0).await;
    let mut cookie = b"pref=\xc3\xa9; ".to_vec();
    cookie.extend_from_slice(format!("{LOGIN_COOKIE}={login}").as_bytes());
    let resp = send_with(app.http.get(&callback), &cookie).await;
    assert_eq!(resp.status(), 302);
    let new = set_cookie(&resp, SESSION_COOKIE).expect("session cookie");
    assert_eq!(
        whoami(&app, format!("{SESSION_COOKIE}={new}").as_bytes()).await,
        Some(sub(&app, 0))
    );
    app.stop().await;
}

#[tokio::test]
async fn cookies_split_over_several_headers_are_all_read() {
    let app = TestApp::spawn().await;
    let session = session_of(&app, 0).await;
    let resp = app
        .http
        .get(app.url("/auth/session"))
        .header("X-CSRF", "1")
        .header(COOKIE, "%5F%5FHost-avemint=garbage; a=1")
        .header(COOKIE, HeaderValue::from_bytes(b"pref=\xc3\xa9").expect("value"))
        .header(COOKIE, format!("{SESSION_COOKIE}={session}"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    app.stop().await;
}

/// `n` bytes of other cookies, in crumbs of about 100 bytes.
fn other_cookies(n: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < n {
        if !s.is_empty() {
            s.push_str("; ");
        }
        let room = n - s.len();
        let name = format!("app{i}=");
        let len = room.saturating_sub(name.len()).min(100);
        s.push_str(&name);
        s.push_str(&"v".repeat(len.max(1)));
        i += 1;
    }
    s
}

#[tokio::test]
async fn a_long_return_to_with_other_cookies_still_signs_in() {
    let app = TestApp::spawn().await;
    let return_to = format!("/{}", "a".repeat(2047));
    let others = other_cookies(1200);
    let (authorize, login) = login_with(&app, others.as_bytes(), Some(&return_to)).await;
    assert!(
        login.len() <= 1400,
        "the login cookie stays small: {} bytes",
        login.len()
    );
    let callback = approve_as(&app, &authorize, 0).await;
    let cookie = format!("{others}; {LOGIN_COOKIE}={login}");
    let resp = send_with(app.http.get(&callback), cookie.as_bytes()).await;
    assert_eq!(resp.status(), 302, "signed in");
    // Longer than avemint keeps: the documented fallback.
    assert_eq!(location(&resp), "/");
    assert!(set_cookie(&resp, SESSION_COOKIE).is_some_and(|v| !v.is_empty()));

    // A return path within the cap is kept.
    let kept = format!(
        "/{}",
        "b".repeat(avemint_core::signin::return_path::MAX_RETURN_PATH - 1)
    );
    let (authorize, login) = login_with(&app, others.as_bytes(), Some(&kept)).await;
    let callback = approve_as(&app, &authorize, 0).await;
    let cookie = format!("{others}; {LOGIN_COOKIE}={login}");
    let resp = send_with(app.http.get(&callback), cookie.as_bytes()).await;
    assert_eq!(resp.status(), 302);
    assert_eq!(location(&resp), kept);
    app.stop().await;
}

#[tokio::test]
async fn avemint_s_own_cookies_are_never_why_a_request_is_refused() {
    let app = TestApp::spawn().await;
    // Just under the limit of other cookies, plus avemint's own: still served.
    let others = other_cookies(4000);
    let (authorize, login) = login_with(&app, others.as_bytes(), Some(&format!("/{}", "q".repeat(400)))).await;
    let callback = approve_as(&app, &authorize, 0).await;
    let cookie = format!("{others}; {LOGIN_COOKIE}={login}");
    let resp = send_with(app.http.get(&callback), cookie.as_bytes()).await;
    assert_eq!(resp.status(), 302, "signed in");
    let session = set_cookie(&resp, SESSION_COOKIE).expect("session");
    let cookie = format!("{SESSION_COOKIE}={session}; {others}");
    assert_eq!(whoami(&app, cookie.as_bytes()).await, Some(sub(&app, 0)));
    // Other cookies over the limit are still refused.
    let resp = send_with(app.http.get(app.url("/auth/session")), other_cookies(4200).as_bytes()).await;
    assert_eq!(resp.status(), 431);
    // So is a pile of crumbs named like avemint's (only one of each is avemint's).
    let pile = vec![format!("{SESSION_COOKIE}={session}"); 80].join("; ");
    let resp = send_with(app.http.get(app.url("/auth/session")), pile.as_bytes()).await;
    assert_eq!(resp.status(), 431);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_callback_expires_the_login_cookie() {
    let app = TestApp::spawn().await;
    let (authorize, login) = login_with(&app, b"", None).await;
    let callback = approve_as(&app, &authorize, 0).await;
    let (base, query) = callback.split_once('?').expect("query");
    let wrong_state: Vec<String> = query
        .split('&')
        .map(|kv| {
            if kv.starts_with("state=") {
                "state=wrong".to_owned()
            } else {
                kv.to_owned()
            }
        })
        .collect();
    let resp = send_with(
        app.http.get(format!("{base}?{}", wrong_state.join("&"))),
        format!("{LOGIN_COOKIE}={login}").as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_expires(&resp, LOGIN_COOKIE);
    assert_eq!(set_cookie(&resp, SESSION_COOKIE), None);
    // A garbage login cookie, likewise.
    let resp = send_with(app.http.get(&callback), format!("{LOGIN_COOKIE}=garbage").as_bytes()).await;
    assert_eq!(resp.status(), 400);
    assert_expires(&resp, LOGIN_COOKIE);
    app.stop().await;
}

#[tokio::test]
async fn a_401_for_an_unknown_or_malformed_session_clears_the_session_cookie() {
    let app = TestApp::spawn().await;
    let session = session_of(&app, 0).await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let resp = send_with(
        app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"),
        cookie.as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 204);
    // The browser kept the cookie anyway (or an old tab sends it): the session is unknown now.
    for cookie in [cookie.clone(), format!("{SESSION_COOKIE}=not-a-session-id")] {
        let resp = send_with(
            app.http.get(app.url("/auth/session")).header("X-CSRF", "1"),
            cookie.as_bytes(),
        )
        .await;
        assert_eq!(resp.status(), 401);
        assert_expires(&resp, SESSION_COOKIE);
        let resp = send_with(
            app.http.post(app.url("/auth/token")).header("X-CSRF", "1"),
            cookie.as_bytes(),
        )
        .await;
        assert_eq!(resp.status(), 401);
        assert_expires(&resp, SESSION_COOKIE);
    }
    // No cookie at all: nothing to clear.
    let resp = send_with(app.http.get(app.url("/auth/session")).header("X-CSRF", "1"), b"a=1").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(set_cookie(&resp, SESSION_COOKIE), None);
    app.stop().await;
}

#[tokio::test]
async fn a_401_after_a_failed_renewal_clears_the_session_cookie() {
    let app = TestApp::spawn_with(Options {
        emulator: Some(EmulatorConfig {
            access_token_ttl: Duration::from_secs(2),
            ..EmulatorConfig::default()
        }),
        renewal: Some(RenewalSettings {
            skew: Duration::ZERO,
            ..RenewalSettings::default()
        }),
        ..Options::default()
    })
    .await;
    let session = session_of(&app, 0).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    app.emulator.revoke_all_refresh_families();
    let resp = send_with(
        app.http.post(app.url("/auth/token")).header("X-CSRF", "1"),
        format!("{SESSION_COOKIE}={session}").as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_expires(&resp, SESSION_COOKIE);
    assert_eq!(error_code(resp).await, "login_required");
    app.stop().await;
}

const PROFILES: &str = r#"
[[profiles]]
name = "web"
audience = "web"
default = true

[[profiles]]
name = "orders"
audience = "orders-api"
"#;

#[tokio::test]
async fn without_a_session_known_and_unknown_profiles_are_both_401() {
    let app = TestApp::spawn_with(Options {
        token_toml: Some(PROFILES.into()),
        ..Options::default()
    })
    .await;
    for body in [
        json!({"profile": "orders"}),
        json!({"profile": "no-such-profile"}),
        json!({"audience": "orders-api"}),
        json!({"audience": "https://no-such-api.example"}),
        json!({"profile": "web", "audience": "orders-api"}),
    ] {
        for cookie in ["a=1".to_owned(), format!("{SESSION_COOKIE}=not-a-session")] {
            let resp = send_with(
                app.http.post(app.url("/auth/token")).header("X-CSRF", "1").json(&body),
                cookie.as_bytes(),
            )
            .await;
            assert_eq!(resp.status(), 401, "{body} with {cookie}");
            assert_eq!(error_code(resp).await, "login_required");
        }
    }
    // With a session, an unknown target is still refused as such.
    let session = session_of(&app, 0).await;
    let resp = send_with(
        app.http
            .post(app.url("/auth/token"))
            .header("X-CSRF", "1")
            .json(&json!({"profile": "no-such-profile"})),
        format!("{SESSION_COOKIE}={session}").as_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(error_code(resp).await, "invalid_target");
    app.stop().await;
}

#[tokio::test]
async fn head_avemint_js_answers_like_get_without_a_body() {
    let app = TestApp::spawn().await;
    let get = app.http.get(app.url("/avemint.js")).send().await.expect("get");
    assert_eq!(get.status(), 200);
    let get_headers = get.headers().clone();
    let body = get.bytes().await.expect("body");
    let head = app.http.head(app.url("/avemint.js")).send().await.expect("head");
    assert_eq!(head.status(), 200);
    for name in [CONTENT_TYPE.as_str(), "cache-control", "x-content-type-options"] {
        assert_eq!(head.headers().get(name), get_headers.get(name), "{name}");
    }
    assert_eq!(
        head.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()),
        Some(body.len().to_string().as_str())
    );
    assert!(head.bytes().await.expect("no body").is_empty());
    app.stop().await;
}

#[test]
fn demo_refuses_a_config_file_instead_of_ignoring_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, "client_id = \"app_x\"\n").expect("write");
    let cfg = cfg.to_str().expect("utf8");
    let runs: [(&[&str], Option<&str>); 3] = [
        (&["demo", "--listen", "127.0.0.1:0", "--config", cfg], None),
        (&["--config", cfg, "demo", "--listen", "127.0.0.1:0"], None),
        (&["demo", "--listen", "127.0.0.1:0"], Some(cfg)),
    ];
    for (args, env_config) in runs {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"));
        cmd.args(args)
            .env_clear()
            .env("AVEMINT_KEYS_DIR", dir.path().join("keys"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(c) = env_config {
            cmd.env("AVEMINT_CONFIG", c);
        }
        let mut child = cmd.spawn().expect("spawns");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: the demo ran with a configuration file it does not read");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().expect("output");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("demo") && err.contains("configuration file"), "{err}");
        assert!(out.stdout.is_empty(), "nothing started");
    }
}
