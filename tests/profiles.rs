//! Token profiles, claim maps, the enrichment hook and the token size limit,
//! over HTTP against the emulator. The hook is a real HTTP server on loopback
//! that checks avemint's HMAC signature on every call.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::hmac;
use poem::listener::TcpAcceptor;
use poem::{Endpoint, Request, Response, Server};
use serde_json::{Value, json};
use support::{Browser, Options, TestApp, error_code, token_settings_from_toml};

const HOOK_SECRET: &str = "0123456789abcdef0123456789abcdef-test-hook-secret";
/// The secret a rotation puts in the hook's `secret_file`; the test hook accepts both while it rotates.
const NEW_HOOK_SECRET: &str = "fedcba9876543210fedcba9876543210-rotated-hook-secret";

/// What the test hook has seen.
#[derive(Default)]
struct HookLog {
    calls: Mutex<BTreeMap<String, usize>>,
    bodies: Mutex<Vec<Value>>,
    bad_signatures: AtomicUsize,
    /// Calls signed with `NEW_HOOK_SECRET`.
    new_signatures: AtomicUsize,
}

/// A claims hook on loopback. Paths pick its behaviour:
/// `/roles` answers roles, `/sneaky` also tries to set registered claims,
/// `/slow` answers after 5 s, `/garbage` answers HTML.
struct HookServer {
    base: String,
    log: Arc<HookLog>,
    task: tokio::task::JoinHandle<()>,
}

impl HookServer {
    async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
        let log = Arc::new(HookLog::default());
        let endpoint = HookEndpoint { log: log.clone() };
        let task = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(endpoint).await;
        });
        Self { base, log, task }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn calls(&self, path: &str) -> usize {
        self.log.calls.lock().expect("lock").get(path).copied().unwrap_or(0)
    }

    fn bad_signatures(&self) -> usize {
        self.log.bad_signatures.load(Ordering::SeqCst)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct HookEndpoint {
    log: Arc<HookLog>,
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

/// Checks `X-Avemint-Signature` the way docs/token-profiles.md tells receivers to: the secret it verifies under, if any.
fn signature_ok(req: &Request, body: &[u8]) -> Option<&'static str> {
    [HOOK_SECRET, NEW_HOOK_SECRET]
        .into_iter()
        .find(|secret| signature_under(req, body, secret))
}

fn signature_under(req: &Request, body: &[u8], secret: &str) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let (Some(ts), Some(sig)) = (header("X-Avemint-Timestamp"), header("X-Avemint-Signature")) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<i64>() else { return false };
    let now = avemint_base::clock::Clock::System.now().as_secs();
    if (now - ts_num).abs() > 300 {
        return false;
    }
    let Some(tag) = sig.strip_prefix("sha256=").and_then(from_hex) else {
        return false;
    };
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&key, &signed, &tag).is_ok()
}

impl Endpoint for HookEndpoint {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        let body = req.take_body().into_bytes().await?;
        *self.log.calls.lock().expect("lock").entry(path.clone()).or_default() += 1;
        match signature_ok(&req, &body) {
            None => {
                self.log.bad_signatures.fetch_add(1, Ordering::SeqCst);
                return Ok(Response::builder()
                    .status(poem::http::StatusCode::UNAUTHORIZED)
                    .finish());
            }
            Some(NEW_HOOK_SECRET) => {
                self.log.new_signatures.fetch_add(1, Ordering::SeqCst);
            }
            Some(_) => {}
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.log.bodies.lock().expect("lock").push(parsed);
        let json = |v: Value| Response::builder().content_type("application/json").body(v.to_string());
        Ok(match path.as_str() {
            "/roles" => json(json!({"roles": ["orders:read", "orders:write"]})),
            "/sneaky" => json(json!({
                "roles": ["admin"], "tier": "gold", "sub": "someone-else", "exp": 1, "aud": "other", "email": null
            })),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                json(json!({"roles": ["late"]}))
            }
            "/garbage" => Response::builder()
                .content_type("text/html")
                .body("<html>proxy error</html>"),
            _ => Response::builder().status(poem::http::StatusCode::NOT_FOUND).finish(),
        })
    }
}

fn secret_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("hook_secret");
    std::fs::write(&path, format!("{HOOK_SECRET}\n")).expect("write secret");
    path.to_str().expect("utf8").to_owned()
}

async fn spawn(toml: String) -> TestApp {
    TestApp::spawn_with(Options {
        token_toml: Some(toml),
        ..Options::default()
    })
    .await
}

async fn token_of(resp: reqwest::Response) -> (String, u64) {
    assert_eq!(resp.status(), 200, "token minted");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["token_type"], "Bearer");
    (
        body["access_token"].as_str().expect("token").to_owned(),
        body["expires_in"].as_u64().expect("expires_in"),
    )
}

const TWO_PROFILES: &str = r#"
[[profiles]]
name = "web"
audience = "https://app.example.com"
ttl = 300
default = true

[profiles.claims]
email = "{id_token.email}"
avatar = "{id_token.picture}"
avatar_url = "{user.avatarUrl}"
nickname = "{id_token.nickname}"
user_handle = "{user.handle}"
flags = { beta = true, level = 3 }

[[profiles]]
name = "orders"
audience = "orders-api"
ttl = 60

[profiles.claims]
handle = "{id_token.preferred_username}"
scopes = ["orders:read"]
"#;

#[tokio::test]
async fn two_profiles_with_different_audiences_and_ttls() {
    let app = spawn(TWO_PROFILES.into()).await;
    let mut b = app.signed_in_browser().await;
    let user = app.emulator.users()[0].clone();

    // No body: the default profile, with present references rendered and
    // absent or null ones omitted.
    let (token, expires_in) = token_of(app.post_token(&mut b, true).await).await;
    assert_eq!(expires_in, 300);
    let web = app.verify_for(&token, "https://app.example.com").await.claims;
    assert_eq!(
        web["exp"].as_u64().expect("exp") - web["iat"].as_u64().expect("iat"),
        300
    );
    assert_eq!(web["email"].as_str(), user.email.as_deref());
    assert_eq!(web["user_handle"], user.handle);
    assert_eq!(web["flags"], json!({"beta": true, "level": 3}));
    assert!(user.avatar_url.is_none(), "the first emulated user has picture: null");
    for omitted in ["avatar", "avatar_url", "nickname", "handle", "scopes"] {
        assert!(web.get(omitted).is_none(), "{omitted} omitted: {web}");
    }
    assert_eq!(web["sub"], user.id);

    // By audience, by profile name, by both: the orders profile.
    for body in [
        json!({"audience": "orders-api"}),
        json!({"profile": "orders"}),
        json!({"profile": "orders", "audience": "orders-api"}),
    ] {
        let (token, expires_in) = token_of(app.post_token_json(&mut b, &body).await).await;
        assert_eq!(expires_in, 60, "{body}");
        let orders = app.verify_for(&token, "orders-api").await.claims;
        assert_eq!(orders["aud"], "orders-api");
        assert_eq!(
            orders["exp"].as_u64().expect("exp") - orders["iat"].as_u64().expect("iat"),
            60
        );
        assert_eq!(orders["handle"], user.handle);
        assert_eq!(orders["scopes"], json!(["orders:read"]));
        assert!(orders.get("email").is_none(), "claims are per profile");
    }
    // `{}` is the default profile too.
    let (token, _) = token_of(app.post_token_json(&mut b, &json!({})).await).await;
    assert_eq!(
        app.verify_for(&token, "https://app.example.com").await.claims["aud"],
        "https://app.example.com"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_targets_are_invalid_target_and_never_another_token() {
    let app = spawn(TWO_PROFILES.into()).await;
    let mut b = app.signed_in_browser().await;
    for body in [
        json!({"audience": "https://evil.example"}),
        json!({"audience": "orders-api/"}),
        json!({"profile": "admin"}),
        json!({"profile": "orders", "audience": "https://evil.example"}),
    ] {
        let resp = app.post_token_json(&mut b, &body).await;
        assert_eq!(resp.status(), 403, "{body}");
        assert_eq!(error_code(resp).await, "invalid_target", "{body}");
    }
    let resp = app
        .post_token_json(&mut b, &json!({"profile": "web", "audience": "orders-api"}))
        .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(error_code(resp).await, "invalid_request");
    for bad in [r#"{"aud":"orders-api"}"#, r#"{"audience":["orders-api"]}"#, "{", "[]"] {
        let resp = b
            .send(
                app.http
                    .post(app.url("/auth/token"))
                    .header("X-CSRF", "1")
                    .header("Content-Type", "application/json")
                    .body(bad),
            )
            .await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(error_code(resp).await, "invalid_request", "{bad}");
    }
    let resp = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .header("X-CSRF", "1")
                .header("Content-Type", "text/plain")
                .body("orders-api"),
        )
        .await;
    assert_eq!(resp.status(), 415);
    assert_eq!(error_code(resp).await, "invalid_request");
    // The CSRF header and the session are still required with a body.
    let resp = b
        .send(
            app.http
                .post(app.url("/auth/token"))
                .json(&json!({"audience": "orders-api"})),
        )
        .await;
    assert_eq!(resp.status(), 403);
    let resp = app
        .post_token_json(&mut Browser::default(), &json!({"audience": "orders-api"}))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "login_required");
    app.stop().await;
}

fn hook_profiles(hook: &HookServer, secret: &str) -> String {
    format!(
        r#"
[[profiles]]
name = "web"
audience = "web"
default = true

[[profiles]]
name = "orders"
audience = "orders-api"
[profiles.claims]
tier = "standard"
email = "{{id_token.email}}"
[profiles.hook]
url = "{sneaky}"
secret_file = "{secret}"
cache_ttl = 60

[[profiles]]
name = "slow-deny"
audience = "slow-deny"
[profiles.hook]
url = "{slow}"
secret = "{HOOK_SECRET}"
timeout_ms = 200
on_failure = "deny"

[[profiles]]
name = "slow-omit"
audience = "slow-omit"
[profiles.claims]
tier = "standard"
[profiles.hook]
url = "{slow}"
secret = "{HOOK_SECRET}"
timeout_ms = 200
on_failure = "omit"

[[profiles]]
name = "garbage-deny"
audience = "garbage-deny"
[profiles.hook]
url = "{garbage}"
secret = "{HOOK_SECRET}"

[[profiles]]
name = "garbage-omit"
audience = "garbage-omit"
[profiles.claims]
tier = "standard"
[profiles.hook]
url = "{garbage}"
secret = "{HOOK_SECRET}"
on_failure = "omit"

[[profiles]]
name = "uncached"
audience = "uncached"
[profiles.hook]
url = "{roles}"
secret = "{HOOK_SECRET}"
cache_ttl = 0
"#,
        sneaky = hook.url("/sneaky"),
        slow = hook.url("/slow"),
        garbage = hook.url("/garbage"),
        roles = hook.url("/roles"),
    )
}

#[tokio::test]
async fn the_hook_merges_claims_signed_and_cached_per_session_and_profile() {
    let hook = HookServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(hook_profiles(&hook, &secret_file(&dir))).await;
    let user = app.emulator.users()[0].clone();
    let mut b = app.signed_in_browser().await;

    let (token, _) = token_of(app.post_token_json(&mut b, &json!({"audience": "orders-api"})).await).await;
    let claims = app.verify_for(&token, "orders-api").await.claims;
    assert_eq!(claims["roles"], json!(["admin"]), "merged from the hook");
    assert_eq!(claims["tier"], "gold", "the hook's value wins over the claim map");
    assert_eq!(
        claims["email"].as_str(),
        user.email.as_deref(),
        "a null from the hook changes nothing"
    );
    assert_eq!(claims["sub"], user.id, "registered claims stay avemint's");
    assert_eq!(claims["aud"], "orders-api");
    assert!(claims["exp"].as_u64().expect("exp") > 1);
    assert_eq!(hook.bad_signatures(), 0, "every call carried a valid HMAC signature");
    let sent = hook.log.bodies.lock().expect("lock")[0].clone();
    assert_eq!(
        sent,
        json!({"sub": user.id, "claims": {"tier": "standard", "email": user.email}, "audience": "orders-api"})
    );

    // Cached per session and profile: the same session calls once.
    for _ in 0..3 {
        token_of(app.post_token_json(&mut b, &json!({"profile": "orders"})).await).await;
    }
    assert_eq!(hook.calls("/sneaky"), 1);
    // Another session calls again.
    let mut other = app.signed_in_browser().await;
    let (token, _) = token_of(app.post_token_json(&mut other, &json!({"profile": "orders"})).await).await;
    assert_eq!(
        app.verify_for(&token, "orders-api").await.claims["roles"],
        json!(["admin"])
    );
    assert_eq!(hook.calls("/sneaky"), 2);
    // A profile without a hook never calls it; `cache_ttl = 0` calls every time.
    token_of(app.post_token(&mut b, true).await).await;
    for _ in 0..2 {
        let (token, _) = token_of(app.post_token_json(&mut b, &json!({"profile": "uncached"})).await).await;
        let claims = app.verify_for(&token, "uncached").await.claims;
        assert_eq!(claims["roles"], json!(["orders:read", "orders:write"]));
    }
    assert_eq!(hook.calls("/roles"), 2);
    assert_eq!(hook.bad_signatures(), 0);
    app.stop().await;
}

/// The hook secret's file is replaced (atomically, as Kubernetes does) while tokens are minted on several tasks:
/// within seconds every call is signed with the new secret, and no call fails meanwhile (the receiver accepts
/// both secrets while it rotates, as docs/token-profiles.md tells it to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_secret_rotates_on_file_change_under_load() {
    let hook = HookServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = secret_file(&dir);
    let toml = format!(
        "[[profiles]]\nname = \"web\"\naudience = \"web\"\n[profiles.hook]\nurl = \"{}\"\nsecret_file = \"{path}\"\ncache_ttl = 0\n",
        hook.url("/roles")
    );
    let app = Arc::new(spawn(toml).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (app, stop) = (app.clone(), stop.clone());
        let mut b = app.signed_in_browser().await;
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut ok = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = app.post_token(&mut b, true).await;
                if resp.status() == 200 {
                    ok += 1;
                } else {
                    failures.push(resp.status().as_u16());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.log.new_signatures.load(Ordering::SeqCst), 0);
    let tmp = dir.path().join("hook_secret.new");
    std::fs::write(&tmp, format!("{NEW_HOOK_SECRET}\n")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hook.log.new_signatures.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new hook secret was never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Calls signed just before the swap may still be arriving.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls_at_switch = hook.calls("/roles");
    let new_at_switch = hook.log.new_signatures.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for t in tasks {
        let (n, failures) = t.await.expect("task");
        assert!(failures.is_empty(), "failed token calls: {failures:?}");
        ok += n;
    }
    assert!(ok > 30, "the load ran: {ok}");
    assert_eq!(hook.bad_signatures(), 0);
    let later_calls = hook.calls("/roles") - calls_at_switch;
    let later_new = hook.log.new_signatures.load(Ordering::SeqCst) - new_at_switch;
    assert!(
        later_calls > 0 && later_new == later_calls,
        "after the switch only the new secret signs"
    );
}

#[tokio::test]
async fn hook_timeouts_and_non_json_follow_the_profile_policy() {
    let hook = HookServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn(hook_profiles(&hook, &secret_file(&dir))).await;
    let mut b = app.signed_in_browser().await;

    for profile in ["slow-deny", "garbage-deny"] {
        let started = std::time::Instant::now();
        let resp = app.post_token_json(&mut b, &json!({"profile": profile})).await;
        assert_eq!(resp.status(), 503, "{profile}");
        assert!(resp.headers().get("retry-after").is_some());
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["error"], "temporarily_unavailable");
        assert!(
            !body.to_string().contains("proxy error"),
            "the hook's answer is not echoed"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{profile}: the timeout applies"
        );
    }
    for profile in ["slow-omit", "garbage-omit"] {
        let started = std::time::Instant::now();
        let (token, _) = token_of(app.post_token_json(&mut b, &json!({"profile": profile})).await).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{profile}: the timeout applies"
        );
        let claims = app.verify_for(&token, profile).await.claims;
        assert!(
            claims.get("roles").is_none(),
            "{profile}: minted without the hook's claims"
        );
        assert_eq!(claims["tier"], "standard", "{profile}: the claim map still applies");
    }
    // Failures are not cached: the next token asks the hook again.
    token_of(app.post_token_json(&mut b, &json!({"profile": "garbage-omit"})).await).await;
    assert_eq!(hook.calls("/garbage"), 3);
    assert_eq!(hook.bad_signatures(), 0);
    app.stop().await;
}

#[tokio::test]
async fn tokens_over_the_size_limit_are_refused_with_a_clear_error() {
    let big = "x".repeat(700);
    let app = spawn(format!(
        r#"
max_token_bytes = 1024

[[profiles]]
name = "small"
audience = "small"
default = true

[[profiles]]
name = "big"
audience = "big"
[profiles.claims]
blob = "{big}"
"#
    ))
    .await;
    let mut b = app.signed_in_browser().await;
    let (token, _) = token_of(app.post_token(&mut b, true).await).await;
    assert!(token.len() <= 1024);
    app.verify_for(&token, "small").await;
    let resp = app.post_token_json(&mut b, &json!({"profile": "big"})).await;
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "server_error");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.contains("1024") && description.contains("`big`"),
        "{description}"
    );
    assert!(!description.contains("xxxx"));
    app.stop().await;
}

#[test]
fn registered_claim_overrides_and_bad_profiles_are_refused_at_start_up() {
    let e = token_settings_from_toml("", &[("AVEMINT_TOKEN_CLAIMS", r#"{"sub":"admin"}"#)]).expect_err("refused");
    assert!(
        e.to_string().contains("AVEMINT_TOKEN_CLAIMS") && e.to_string().contains("`sub`"),
        "{e}"
    );
    for (toml, needle) in [
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.claims]\nsub = \"admin\"\n",
            "`sub`",
        ),
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.claims]\nclient_id = \"{user.id}\"\n",
            "`client_id`",
        ),
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[[profiles]]\nname = \"a\"\naudience = \"y\"\ndefault = true\n",
            "name",
        ),
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\ndefault = true\n[[profiles]]\nname = \"b\"\naudience = \"x\"\n",
            "audience",
        ),
        ("[[profiles]]\nname = \"a\"\naudience = \"x\"\nscope = \"y\"\n", "scope"),
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"https://h.example\"\nsecret = \"0123456789abcdef0123456789abcdef\"\nretries = 3\n",
            "retries",
        ),
    ] {
        let e = token_settings_from_toml(toml, &[]).expect_err(toml);
        assert!(e.to_string().contains(needle), "{needle} in {e}");
    }
}

fn serve(config: Option<&str>, env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_avemint"));
    if let Some(text) = config {
        let path = dir.path().join("avemint.toml");
        std::fs::write(&path, text).expect("write");
        cmd.arg("--config").arg(path);
    }
    cmd.arg("serve")
        .env_clear()
        .env("AVE_CLIENT_ID", "app_x")
        .env("AVE_CLIENT_SECRET", "s3cret")
        .env("AVEMINT_PUBLIC_URL", "http://127.0.0.1:9")
        .env("AVEMINT_SESSION_KEYS", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .env("AVEMINT_LISTEN", "127.0.0.1:0")
        .env("AVEMINT_DATABASE_URL", "sqlite::memory:")
        .env("AVEMINT_KEYS_DIR", dir.path().join("keys"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs")
}

#[test]
fn the_binary_exits_2_with_one_line_when_a_map_overrides_sub() {
    let from_env = serve(None, &[("AVEMINT_TOKEN_CLAIMS", r#"{"role":"x","sub":"admin"}"#)]);
    let from_file = serve(
        Some("[[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n[profiles.claims]\nsub = \"admin\"\n"),
        &[],
    );
    for (out, origin) in [(from_env, "AVEMINT_TOKEN_CLAIMS"), (from_file, "profile `orders`")] {
        assert_eq!(out.status.code(), Some(2), "{origin}");
        let err = String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = err.lines().filter(|l| l.starts_with("  ")).collect();
        assert_eq!(problems.len(), 1, "{err}");
        assert!(
            problems[0].contains(origin) && problems[0].contains("claim `sub` is registered"),
            "{err}"
        );
    }
}

/// The worked example of docs/token-profiles.md, run as written (the hook URL and secret file
/// pointed at this test's hook server). Prints one decoded token per profile:
/// `cargo test --test profiles worked_example -- --nocapture`.
#[tokio::test]
async fn worked_example_from_the_docs() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/token-profiles.md"))
        .expect("docs/token-profiles.md");
    let marker = "<!-- worked example: tests/profiles.rs runs this config -->";
    let start = readme.find(marker).expect("marker") + marker.len();
    let block = &readme[start..];
    let block = &block[block.find("```toml\n").expect("toml block") + 8..];
    let config = &block[..block.find("```").expect("end of block")];

    let hook = HookServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config
        .replace("https://roles.internal.example.com/avemint", &hook.url("/roles"))
        .replace("/run/secrets/avemint_hook_secret", &secret_file(&dir));
    let app = spawn(config).await;
    let mut b = app.signed_in_browser().await;
    let jwks = app.jwks().await;
    for (body, audience) in [
        (None, "https://app.example.com"),
        (Some(json!({"audience": "orders-api"})), "orders-api"),
    ] {
        let resp = match &body {
            None => app.post_token(&mut b, true).await,
            Some(body) => app.post_token_json(&mut b, body).await,
        };
        let (token, _) = token_of(resp).await;
        let data = app.verify_for(&token, audience).await;
        let lifetime = data.claims["exp"].as_u64().expect("exp") - data.claims["iat"].as_u64().expect("iat");
        assert_eq!(lifetime, if audience == "orders-api" { 120 } else { 300 });
        if audience == "orders-api" {
            assert_eq!(data.claims["roles"], json!(["orders:read", "orders:write"]));
        } else {
            // The orders API refuses the web backend's token: its `aud` differs.
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("jwks");
            let kid = data.header.kid.clone().expect("kid");
            let key = jsonwebtoken::DecodingKey::from_jwk(set.find(&kid).expect("key")).expect("key");
            let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
            v.set_audience(&["orders-api"]);
            let err = jsonwebtoken::decode::<Value>(&token, &key, &v).expect_err("wrong audience");
            assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidAudience);
        }
        println!(
            "POST /auth/token {}\nheader: {}\nclaims: {}\n",
            body.map_or("(no body)".to_owned(), |b| b.to_string()),
            serde_json::to_string(&data.header).expect("header"),
            serde_json::to_string_pretty(&data.claims).expect("claims"),
        );
    }
    assert_eq!(hook.bad_signatures(), 0);
    app.stop().await;
}
