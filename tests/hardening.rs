//! Browser-facing hardening, black-box over HTTP: security headers, the
//! cross-origin (CSRF) check, CORS, size limits, sign-in rate limits and
//! `X-Forwarded-*` handling.

mod support;

use avemint::config::AllowedOrigins;
use avemint::config::{Docs, SecuritySettings};
use avemint_core::traffic::client_ip::TrustedProxies;
use avemint_core::traffic::rate_limit::RateLimit;
use reqwest::StatusCode;
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL,
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, RETRY_AFTER, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
};
use std::time::{Duration, Instant};
use support::{Browser, LOGIN_COOKIE, Options, TestApp, error_code, location};

use avemint::config::ConnectionTimeouts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Another loopback origin: same site as avemint's `127.0.0.1`, different origin.
const OTHER_ORIGIN: &str = "http://localhost:9";

async fn spawn(security: SecuritySettings) -> TestApp {
    TestApp::spawn_with(Options {
        security: Some(security),
        ..Options::default()
    })
    .await
}

fn with_origins(origins: &str) -> SecuritySettings {
    SecuritySettings {
        allowed_origins: AllowedOrigins::parse(origins).expect("origins"),
        ..SecuritySettings::default()
    }
}

#[tokio::test]
async fn security_headers_on_auth_html_and_everything_else() {
    let app = TestApp::spawn().await;
    let mut b = Browser::default();
    let login = app.login_start(&mut b, None).await;
    let callback = b.send(app.http.get(app.url("/auth/callback?code=x&state=y"))).await;
    for resp in [&login, &callback] {
        let h = resp.headers();
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(
            !h.contains_key(STRICT_TRANSPORT_SECURITY),
            "no HSTS on an http public URL"
        );
    }
    let mut b = app.signed_in_browser().await;
    let token = app.post_token(&mut b, true).await;
    assert_eq!(token.status(), 200);
    assert_eq!(token.headers()[CACHE_CONTROL], "no-store");
    for path in ["/healthz", "/.well-known/jwks.json", "/no-such-path"] {
        let resp = app.http.get(app.url(path)).send().await.expect("get");
        assert_eq!(resp.headers()[X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
    }
    let docs = app.http.get(app.url("/docs")).send().await.expect("docs");
    assert!(
        docs.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let csp = docs.headers()[CONTENT_SECURITY_POLICY].to_str().expect("ascii");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    app.stop().await;
}

#[tokio::test]
async fn cross_origin_requests_to_the_json_endpoints_are_refused() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    // A form POST from a page on another loopback port: no X-CSRF, foreign Origin.
    let form = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("origin", OTHER_ORIGIN)
                .header("sec-fetch-site", "same-site")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("a=b"),
        )
        .await;
    assert_eq!(form.status(), 403);
    assert!(!form.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    assert_eq!(error_code(form).await, "invalid_request");
    // Even with X-CSRF (a script could add it to a CORS request), a foreign Origin is refused.
    for (name, value) in [
        ("origin", OTHER_ORIGIN),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        for path in ["/auth/token", "/auth/logout"] {
            let resp = b
                .send(app.http.post(app.url(path)).header("X-CSRF", "1").header(name, value))
                .await;
            assert_eq!(resp.status(), 403, "{path} {name}: {value}");
            assert!(!resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        }
        let resp = b
            .send(
                app.http
                    .get(app.url("/auth/session"))
                    .header("X-CSRF", "1")
                    .header(name, value),
            )
            .await;
        assert_eq!(resp.status(), 403, "/auth/session {name}: {value}");
    }
    // Same-origin script requests still work, and the session survived the attempts.
    let own = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("origin", app.address.as_str())
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(own.status(), 200);
    assert!(
        !own.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
        "same-origin needs no CORS"
    );
    // The sign-in navigations are cross-site by nature (Ave redirects back) and are not refused.
    let mut fresh = Browser::default();
    let login = fresh
        .send(
            app.http
                .get(app.url("/auth/login"))
                .header("sec-fetch-site", "cross-site"),
        )
        .await;
    assert_eq!(login.status(), 302);
    app.stop().await;
}

#[tokio::test]
async fn cors_is_default_deny() {
    let app = TestApp::spawn().await;
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/auth/token"))
        .header("origin", OTHER_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-csrf")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 403);
    assert!(!preflight.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    assert!(!preflight.headers().contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
    let mut b = app.signed_in_browser().await;
    let resp = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("origin", OTHER_ORIGIN),
        )
        .await;
    assert_eq!(resp.status(), 403);
    assert!(!resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    let jwks = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .header("origin", OTHER_ORIGIN)
        .send()
        .await
        .expect("jwks");
    assert!(!jwks.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    app.stop().await;
}

/// Issue 22 §6: a preflight for `DELETE` (the method of `DELETE /auth/sessions/{id}`) is allowed for a listed
/// origin (it was refused, so an allowed origin could not end a session); a method the API does not have is not.
#[tokio::test]
async fn cors_preflight_allows_every_method_the_api_has() {
    let app = spawn(with_origins(OTHER_ORIGIN)).await;
    let preflight = |method: &'static str, path: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", OTHER_ORIGIN)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "x-csrf")
            .send()
    };
    for (method, path) in [
        ("DELETE", "/auth/sessions/some-id"),
        ("GET", "/auth/sessions"),
        ("POST", "/auth/logout"),
    ] {
        let resp = preflight(method, path).await.expect("preflight");
        assert_eq!(resp.status(), 204, "{method} {path}");
        let allowed = resp.headers()["access-control-allow-methods"].to_str().expect("ascii");
        assert!(allowed.split(", ").any(|m| m == method), "{method} in {allowed}");
    }
    for method in ["PUT", "PATCH", "TRACE"] {
        assert_eq!(
            preflight(method, "/auth/sessions/x").await.expect("preflight").status(),
            403,
            "{method}"
        );
    }
    // The real request the preflight was for: the listed origin ends the session and may read the answer.
    let mut b = app.signed_in_browser().await;
    let list: serde_json::Value = b
        .send(app.http.get(app.url("/auth/sessions")).header("X-CSRF", "1"))
        .await
        .json()
        .await
        .expect("JSON");
    let id = list["sessions"][0]["id"].as_str().expect("id").to_owned();
    let resp = b
        .send(
            app.http
                .delete(app.url(&format!("/auth/sessions/{id}")))
                .header("X-CSRF", "1")
                .header("origin", OTHER_ORIGIN)
                .header("sec-fetch-site", "same-site"),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], OTHER_ORIGIN);
    app.stop().await;
}

#[tokio::test]
async fn cors_allows_listed_origins_with_credentials_and_never_a_wildcard() {
    let app = spawn(with_origins(OTHER_ORIGIN)).await;
    let preflight = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/auth/token"))
        .header("origin", OTHER_ORIGIN)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-csrf,content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], OTHER_ORIGIN);
    assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "X-CSRF, Content-Type");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .expect("ascii")
            .contains("POST")
    );
    assert!(h["vary"].to_str().expect("ascii").contains("Origin"));

    let mut b = app.signed_in_browser().await;
    let resp = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("origin", OTHER_ORIGIN)
                .header("sec-fetch-site", "same-site"),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], OTHER_ORIGIN);
    assert_eq!(resp.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    // Listed origins still need X-CSRF.
    let resp = b
        .send(app.http.post(app.url("/auth/token")).header("origin", OTHER_ORIGIN))
        .await;
    assert_eq!(resp.status(), 403);
    // An unlisted origin gets nothing, and no response ever says `*`.
    let evil = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("origin", "http://localhost:10"),
        )
        .await;
    assert_eq!(evil.status(), 403);
    assert!(!evil.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    app.stop().await;
}

/// Sends raw bytes and returns the status code and body of the answer.
async fn raw_request(app: &TestApp, request: &[u8]) -> (u16, String) {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before reading everything: a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn oversized_input_is_refused_early_with_json() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    // Cookie header over 4 KiB.
    b.cookies.insert("padding".into(), "p".repeat(4200));
    let resp = b
        .send(app.http.post(app.url("/auth/token")).header("X-CSRF", "1"))
        .await;
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(error_code(resp).await, "invalid_request");
    b.cookies.remove("padding");
    // Query over 8 KiB.
    let resp = app
        .http
        .get(app.url(&format!("/auth/login?return_to=/{}", "a".repeat(8300))))
        .send()
        .await
        .expect("login");
    assert_eq!(resp.status(), StatusCode::URI_TOO_LONG);
    assert_eq!(error_code(resp).await, "invalid_request");
    // Body over 64 KiB, announced by Content-Length.
    let big = vec![b' '; 70 * 1024];
    let mut req = format!(
        "POST /auth/token HTTP/1.1\r\nhost: {}\r\nx-csrf: 1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        app.address.trim_start_matches("http://"),
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    let (status, body) = raw_request(&app, &req).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"error\":\"invalid_request\""), "{body}");
    // The same, chunked (no Content-Length): refused while reading.
    let mut req = format!(
        "POST /auth/token HTTP/1.1\r\nhost: {}\r\nx-csrf: 1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        app.address.trim_start_matches("http://")
    )
    .into_bytes();
    for chunk in big.chunks(8 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_request(&app, &req).await;
    assert_eq!(status, 413, "{body}");
    // A small chunked body passes the limit (and reaches the endpoint: 401 without a session).
    let small = format!(
        "POST /auth/token HTTP/1.1\r\nhost: {}\r\nx-csrf: 1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        app.address.trim_start_matches("http://")
    );
    let (status, body) = raw_request(&app, small.as_bytes()).await;
    assert_eq!(status, 401, "{body}");
    // The session still works.
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    app.stop().await;
}

async fn login_status(app: &TestApp, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url("/auth/login"));
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    req.send().await.expect("login")
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_client_ip() {
    let app = spawn(SecuritySettings {
        login_rate_limit: RateLimit(3),
        ..SecuritySettings::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(login_status(&app, None).await.status(), 302);
    }
    // X-Forwarded-For from an untrusted peer cannot buy a fresh budget.
    let limited = login_status(&app, Some("198.51.100.77")).await;
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()[RETRY_AFTER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(limited.headers()[CACHE_CONTROL], "no-store");
    assert_eq!(error_code(limited).await, "rate_limited");
    // The callback has its own budget.
    for _ in 0..3 {
        let resp = app
            .http
            .get(app.url("/auth/callback?code=c&state=s"))
            .send()
            .await
            .expect("cb");
        assert_eq!(resp.status(), 400);
    }
    let resp = app
        .http
        .get(app.url("/auth/callback?code=c&state=s"))
        .send()
        .await
        .expect("cb");
    assert_eq!(resp.status(), 429);
    // Other endpoints are not limited.
    assert_eq!(app.http.get(app.url("/healthz")).send().await.expect("h").status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_behind_a_trusted_proxy() {
    let app = spawn(SecuritySettings {
        login_rate_limit: RateLimit(1),
        trusted_proxies: TrustedProxies::parse("127.0.0.1").expect("proxies"),
        ..SecuritySettings::default()
    })
    .await;
    assert_eq!(login_status(&app, Some("198.51.100.1")).await.status(), 302);
    assert_eq!(login_status(&app, Some("198.51.100.1")).await.status(), 429);
    assert_eq!(login_status(&app, Some("198.51.100.2")).await.status(), 302);
    // A client-supplied hop left of the proxy's entry does not help.
    assert_eq!(
        login_status(&app, Some("203.0.113.5, 198.51.100.2")).await.status(),
        429
    );
    app.stop().await;
}

async fn login_with(app: &TestApp, header: &str, value: &str) -> u16 {
    let resp = app
        .http
        .get(app.url("/auth/login"))
        .header(header, value)
        .send()
        .await
        .expect("login");
    resp.status().as_u16()
}

/// Issue 13 item 5: hops with ports (both forms) and the standard `Forwarded` header give each client behind a
/// trusted proxy its own sign-in bucket, instead of all of them sharing the proxy's.
#[tokio::test]
async fn forwarded_hops_with_ports_and_the_forwarded_header_get_their_own_buckets() {
    let app = spawn(SecuritySettings {
        login_rate_limit: RateLimit(1),
        trusted_proxies: TrustedProxies::parse("127.0.0.1").expect("proxies"),
        ..SecuritySettings::default()
    })
    .await;
    let xff = "x-forwarded-for";
    assert_eq!(login_with(&app, xff, "192.0.2.1:4444").await, 302);
    assert_eq!(
        login_with(&app, xff, "192.0.2.1:5555").await,
        429,
        "same client, other port"
    );
    assert_eq!(login_with(&app, xff, "198.51.100.1:4444").await, 302, "another client");
    assert_eq!(login_with(&app, xff, "[2001:db8:1::1]:443").await, 302);
    assert_eq!(login_with(&app, xff, "[2001:db8:1::1]:8443").await, 429);
    assert_eq!(login_with(&app, xff, "[2001:db8:2::1]:443").await, 302);
    let fwd = "forwarded";
    assert_eq!(login_with(&app, fwd, "for=203.0.113.1").await, 302);
    assert_eq!(login_with(&app, fwd, "for=\"203.0.113.1:1234\";proto=https").await, 429);
    assert_eq!(login_with(&app, fwd, "for=\"[2001:db8:3::1]:443\"").await, 302);
    assert_eq!(
        login_with(&app, fwd, "for=192.0.2.200, for=\"[2001:db8:4::1]:443\"").await,
        302,
        "several elements: the right-most untrusted one"
    );
    // The proxy's own bucket is untouched by all of the above, then spent once.
    assert_eq!(login_with(&app, fwd, "for=_hidden").await, 302);
    assert_eq!(
        login_with(&app, fwd, "for=unknown").await,
        429,
        "obfuscated clients share the proxy's bucket"
    );
    app.stop().await;
}

#[tokio::test]
async fn forwarded_headers_never_change_the_redirect_uri_or_cookie_flags() {
    for trusted in ["", "127.0.0.1"] {
        let app = spawn(SecuritySettings {
            trusted_proxies: TrustedProxies::parse(trusted).expect("proxies"),
            ..SecuritySettings::default()
        })
        .await;
        let mut b = Browser::default();
        let resp = b
            .send(
                app.http
                    .get(app.url("/auth/login"))
                    .header("x-forwarded-host", "evil.example")
                    .header("x-forwarded-proto", "http")
                    .header("x-forwarded-port", "81")
                    .header("forwarded", "host=evil.example;proto=http")
                    .header("x-forwarded-for", "198.51.100.9"),
            )
            .await;
        assert_eq!(resp.status(), 302);
        let authorize = url::Url::parse(&location(&resp)).expect("url");
        let redirect_uri = authorize
            .query_pairs()
            .find(|(k, _)| k == "redirect_uri")
            .map(|(_, v)| v.into_owned())
            .expect("redirect_uri");
        assert_eq!(
            redirect_uri,
            format!("{}/auth/callback", app.address),
            "trusted={trusted}"
        );
        let set = b
            .set_cookies
            .iter()
            .find(|c| c.starts_with(&format!("{LOGIN_COOKIE}=")))
            .expect("login cookie");
        let lower = set.to_ascii_lowercase();
        assert!(lower.split(';').any(|a| a.trim() == "secure"), "{set}");
        assert!(!lower.contains("domain="), "{set}");
        // The flow still completes against the configured redirect URI.
        let callback = app.authorize(authorize.as_str()).await;
        assert!(callback.starts_with(&format!("{}/auth/callback?", app.address)));
        app.stop().await;
    }
}

/// The operations of the served OpenAPI document: `(path, method, documented responses)`.
async fn operations(app: &TestApp) -> Vec<(String, String, serde_json::Value)> {
    let spec = app.get_json("/openapi.json").await;
    let mut out = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            out.push((path.clone(), method.to_uppercase(), op["responses"].clone()));
        }
    }
    assert!(out.len() >= 9, "{out:?}");
    out
}

/// Every answer the guard gives before routing (431, 414, 413, 403 cross-origin, 429) is a documented
/// response of the operation it was given for, with the `{error, error_description}` body.
#[tokio::test]
async fn every_answer_of_the_guard_is_documented_on_its_operation() {
    let app = spawn(SecuritySettings {
        login_rate_limit: RateLimit(1),
        ..SecuritySettings::default()
    })
    .await;
    for (path, method, responses) in operations(&app).await {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let request = |query: &str| app.http.request(method.clone(), app.url(&format!("{path}{query}")));
        let mut answers = vec![
            request("")
                .header("cookie", format!("pad={}", "p".repeat(4200)))
                .send()
                .await,
            request(&format!("?pad={}", "p".repeat(8300))).send().await,
            request("").body(vec![b' '; 70 * 1024]).send().await,
            request("").header("origin", "https://evil.example").send().await,
        ];
        if path == "/auth/login" || path == "/auth/callback" {
            answers.push(request("").send().await);
        }
        let mut statuses = Vec::new();
        for resp in answers {
            let resp = resp.expect("request");
            let status = resp.status().as_u16();
            statuses.push(status);
            if !matches!(status, 413 | 414 | 431 | 403 | 429) {
                continue;
            }
            let documented = &responses[status.to_string()];
            let schema = &documented["content"]["application/json; charset=utf-8"]["schema"]["$ref"];
            assert_eq!(
                schema, "#/components/schemas/ErrorBody",
                "{method} {path} answered {status}, documented as {documented}"
            );
            let code = if status == 429 {
                "rate_limited"
            } else {
                "invalid_request"
            };
            assert_eq!(error_code(resp).await, code, "{method} {path}");
        }
        assert_eq!(&statuses[..3], [431, 414, 413], "{method} {path}");
        let cross_origin_refused =
            path.starts_with("/auth/") && !matches!(path.as_str(), "/auth/login" | "/auth/callback");
        assert_eq!(
            statuses[3] == 403,
            cross_origin_refused,
            "{method} {path}: {statuses:?}"
        );
        if statuses.len() > 4 {
            assert_eq!(statuses[4], 429, "{method} {path}");
        }
    }
    app.stop().await;
}

/// A method an operation does not list is 405 with `Allow` naming exactly the listed ones
/// (and `HEAD` wherever `GET` is, which the router answers).
#[tokio::test]
async fn undeclared_methods_are_405_with_allow() {
    let app = spawn(SecuritySettings::default()).await;
    let mut declared: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (path, method, _) in operations(&app).await {
        declared.entry(path).or_default().push(method);
    }
    for (path, mut methods) in declared {
        if methods.iter().any(|m| m == "GET") {
            methods.push("HEAD".into());
        }
        methods.sort();
        for undeclared in ["PUT", "DELETE", "PATCH", "TRACE"] {
            if methods.iter().any(|m| m == undeclared) {
                continue;
            }
            let method = reqwest::Method::from_bytes(undeclared.as_bytes()).expect("method");
            let resp = app.http.request(method, app.url(&path)).send().await.expect("request");
            assert_eq!(resp.status(), 405, "{undeclared} {path}");
            let allow = resp.headers()["allow"].to_str().expect("ascii").to_owned();
            let mut allowed: Vec<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
            allowed.sort();
            assert_eq!(allowed, methods, "{undeclared} {path}: Allow: {allow}");
            assert_eq!(error_code(resp).await, "invalid_request");
        }
    }
    app.stop().await;
}

/// Forwarded headers never widen the origin checks either: a foreign `Origin` that forwarded headers
/// claim is "this host" is still refused, and gets no CORS grant, behind a trusted proxy or not.
#[tokio::test]
async fn forwarded_headers_never_widen_the_origin_checks() {
    const EVIL: &str = "http://evil.example";
    for trusted in ["", "127.0.0.1"] {
        let app = spawn(SecuritySettings {
            trusted_proxies: TrustedProxies::parse(trusted).expect("proxies"),
            ..SecuritySettings::default()
        })
        .await;
        let mut b = app.signed_in_browser().await;
        let forwarded = |req: reqwest::RequestBuilder| {
            req.header("origin", EVIL)
                .header("x-forwarded-host", "evil.example")
                .header("x-forwarded-proto", "http")
                .header("forwarded", "host=evil.example;proto=http")
                .header("x-forwarded-for", "198.51.100.9")
        };
        let resp = b
            .send(forwarded(app.http.post(app.url("/auth/token")).header("X-CSRF", "1")))
            .await;
        assert_eq!(resp.status(), 403, "trusted={trusted}");
        assert!(!resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        let preflight = forwarded(
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/auth/token"))
                .header("access-control-request-method", "POST"),
        )
        .send()
        .await
        .expect("preflight");
        assert_eq!(preflight.status(), 403, "trusted={trusted}");
        assert!(!preflight.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        // The session is untouched and same-origin requests still work.
        assert_eq!(app.post_token(&mut b, true).await.status(), 200);
        app.stop().await;
    }
}

/// SECURITY.md states the threat model, the defences, what avemint cannot do (Ave has no revocation)
/// and how to report a vulnerability.
#[test]
fn security_md_states_threats_defences_limits_and_reporting() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SECURITY.md")).expect("SECURITY.md");
    for heading in [
        "## Reporting a vulnerability",
        "## Threat model and defences",
        "## What avemint cannot do",
        "## Dependency policy",
    ] {
        assert!(text.contains(heading), "SECURITY.md lacks `{heading}`");
    }
    assert!(text.contains("Revoke Ave's tokens"), "the revocation limit is stated");
    for threat in [
        "CSRF",
        "Session fixation",
        "Open redirects",
        "Forged or confused id_tokens",
        "Secrets in logs",
    ] {
        assert!(text.contains(threat), "SECURITY.md lacks the `{threat}` threat");
    }
}

fn short_timeouts() -> SecuritySettings {
    SecuritySettings {
        connection_timeouts: ConnectionTimeouts {
            header_read: Duration::from_secs(1),
            keep_alive: Duration::from_secs(3),
        },
        ..SecuritySettings::default()
    }
}

/// Drips `bytes` one per `every` until the server closes the connection; returns how long that took after the
/// first byte, or `None` if the whole request went out and the connection is still open 2 s later.
async fn drip_until_closed(app: &TestApp, bytes: &[u8], every: Duration) -> Option<Duration> {
    let mut stream = tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    for b in bytes {
        if stream.write_all(&[*b]).await.is_err() {
            return Some(started.elapsed());
        }
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => {}
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        _ => None,
    }
}

/// Issue 13 item 6 "Slow headers": a client sending its request line a byte at a time is cut off after the
/// header-read timeout, although it never stays silent long enough for an inactivity timeout.
#[tokio::test]
async fn a_connection_sending_headers_slowly_is_closed() {
    let app = spawn(short_timeouts()).await;
    let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let closed = drip_until_closed(&app, request, Duration::from_millis(200)).await;
    let closed = closed.expect("the slow connection was never closed");
    assert!(
        closed < Duration::from_millis(2500),
        "closed after {closed:?}, want about the 1 s header-read timeout"
    );
    eprintln!("measured: slow-header connection closed after {closed:?} (header-read timeout 1 s)");
    app.stop().await;
}

/// An idle connection (no request in progress, nothing sent) is closed after the keep-alive timeout, and a
/// normal keep-alive connection serves several requests in a row.
#[tokio::test]
async fn idle_connections_are_closed_after_the_keep_alive_timeout() {
    let app = spawn(short_timeouts()).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        stream.write_all(request.as_bytes()).await.expect("write");
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // Quicker than either timeout: the connection is reused.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(6), stream.read(&mut buf))
        .await
        .expect("closed within 6 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not answered");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(2000) && waited < Duration::from_millis(4500),
        "closed after {waited:?}, want about the 3 s keep-alive timeout"
    );
    // A connection that never sends anything is closed too.
    let mut silent = tokio::net::TcpStream::connect(&host).await.expect("connect");
    let n = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut buf))
        .await
        .expect("closed within 6 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    app.stop().await;
}

/// Issue 13 item 6 "Swagger UI shares the session origin with inline scripts allowed": `/docs` is served with a
/// CSP that allows exactly its own inline scripts and styles (by hash) and nothing inline besides.
#[tokio::test]
async fn the_docs_page_allows_only_its_own_inline_script_and_style() {
    use base64::Engine as _;
    let app = spawn(SecuritySettings::default()).await;
    for path in ["/docs", "/docs/"] {
        let resp = app.http.get(app.url(path)).send().await.expect("docs");
        assert_eq!(resp.status(), 200, "{path}");
        let csp = resp.headers()[CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .to_owned();
        let html = resp.text().await.expect("html");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
        let directive = |name: &str| -> Vec<String> {
            csp.split(';')
                .map(str::trim)
                .find_map(|d| d.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {csp}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        for (tag, name) in [("script", "script-src "), ("style", "style-src ")] {
            let allowed = directive(name);
            let texts = avemint::http::docs::inline_elements(&html, tag);
            assert!(!texts.is_empty(), "{tag} elements on the page");
            let hashes: Vec<String> = texts
                .iter()
                .map(|t| {
                    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes());
                    format!(
                        "'sha256-{}'",
                        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
                    )
                })
                .collect();
            let mut sorted_allowed = allowed.clone();
            sorted_allowed.sort();
            let mut sorted_hashes = hashes.clone();
            sorted_hashes.sort();
            assert_eq!(sorted_allowed, sorted_hashes, "{name}: exactly the page's own {tag}s");
        }
    }
    // Other HTML keeps the strict policy; the spec is still served.
    assert_eq!(
        app.http
            .get(app.url("/openapi.json"))
            .send()
            .await
            .expect("spec")
            .status(),
        200
    );
    app.stop().await;
}

/// `AVEMINT_DOCS=off` (issues 13 and 17): neither `/docs` nor `/openapi.json` is served on the public port.
#[tokio::test]
async fn docs_off_serves_neither_the_docs_nor_the_spec() {
    let app = spawn(SecuritySettings {
        docs: Docs::Off,
        ..SecuritySettings::default()
    })
    .await;
    for path in ["/docs", "/docs/", "/openapi.json"] {
        let resp = app.http.get(app.url(path)).send().await.expect("get");
        assert_eq!(resp.status(), 404, "{path}");
        let body = resp.text().await.expect("body");
        assert!(
            !body.contains("swagger") && !body.contains("\"openapi\""),
            "{path}: {body}"
        );
    }
    assert_eq!(app.http.get(app.url("/healthz")).send().await.expect("h").status(), 200);
    let mut b = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut b, true).await.status(), 200);
    app.stop().await;
}

/// Issue 13 item 5: a hop a trusted proxy sends that cannot be parsed is logged at `warn`, at most once a minute
/// however many arrive (checked on a real `avemint serve` process's stderr).
#[tokio::test]
async fn unparsable_hops_from_a_trusted_proxy_are_logged_once_a_minute() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = ave_emulator::Emulator::start(ave_emulator::EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..Default::default()
    })
    .await
    .expect("emulator");
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let database_url = format!("sqlite://{}", dir.path().join("a.db").display());
    let mut child = support::serve_command(
        &support::AveClientEnv::of(&emulator),
        port,
        &database_url,
        &dir.path().join("keys"),
    )
    .env("AVEMINT_TRUSTED_PROXIES", "127.0.0.1")
    .stderr(log)
    .spawn()
    .expect("avemint serve starts");
    support::wait_ready(&base).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    for (header, value) in [
        ("x-forwarded-for", "not-an-address"),
        ("x-forwarded-for", "198.51.100.1:99999"),
        ("forwarded", "for=[2001:db8::1]:443"),
        ("x-forwarded-for", "192.0.2.1, bad hop"),
        ("forwarded", "for=\"unterminated"),
    ] {
        let resp = http
            .get(format!("{base}/healthz"))
            .header(header, value)
            .send()
            .await
            .expect("healthz");
        assert_eq!(resp.status(), 200);
    }
    // A good hop with a port is not worth a warning.
    let resp = http
        .get(format!("{base}/healthz"))
        .header("x-forwarded-for", "[2001:db8::1]:443")
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_path).expect("log");
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains("cannot be parsed")).collect();
    assert_eq!(warnings.len(), 1, "one warning for five bad hops in a minute:\n{text}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(
        warnings[0].contains("not-an-address"),
        "the hop is quoted: {}",
        warnings[0]
    );
}

/// The same for a body: a request whose body drips in (slow POST) is answered 400 after the header-read timeout
/// instead of holding the connection until the last byte.
#[tokio::test]
async fn a_request_body_sent_slowly_is_refused_in_time() {
    let app = spawn(short_timeouts()).await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&host).await.expect("connect");
    let head = format!(
        "POST /auth/token HTTP/1.1\r\nhost: {host}\r\nx-csrf: 1\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut answer = String::new();
    while started.elapsed() < Duration::from_secs(8) {
        if stream.write_all(b" ").await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        if answer.contains("\r\n\r\n") && answer.contains('}') {
            break;
        }
    }
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?} after {waited:?}");
    assert!(answer.contains("invalid_request"), "{answer}");
    assert!(waited < Duration::from_millis(2500), "answered after {waited:?}");
    app.stop().await;
}
