//! Liveness and readiness under outages (issue 12, items 2 and 4 "Store
//! outages"): an Ave outage across the metadata cache's expiry never flips
//! `/readyz` and signed-in sessions keep being served from the last good copy;
//! a real PostgreSQL outage (a TCP proxy in front of the shared server, which
//! is stopped) costs session requests a 503 with `Retry-After` while JWKS,
//! discovery and readiness keep answering; an instance that never reached Ave
//! is not ready. Black-box over HTTP against the real emulator.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ave_emulator::{Emulator, EmulatorConfig};
use avemint_base::clock::Clock;
use avemint_base::secret::Secret;
use avemint_base::web_url::Issuer;
use avemint_core::ave::id_token::{self, NonceCheck};
use avemint_core::ave::{AveClient, ClientOptions, IdTokenError};
use avemint_core::session::DatabaseUrl;
use serde_json::{Value, json};
use support::{Browser, Options, TestApp, database_url_string, error_code, postgres_schema, sign_in_at, wait_ready};
use tokio::task::JoinHandle;

/// The metadata lifetime in these tests: short enough to cross it quickly.
const TTL: Duration = Duration::from_secs(1);

fn short_ttl() -> Option<ClientOptions> {
    Some(ClientOptions {
        metadata_ttl: TTL,
        ..ClientOptions::default()
    })
}

async fn readyz(app_base: &str) -> (u16, Value) {
    let resp = reqwest::get(format!("{app_base}/readyz"))
        .await
        .expect("readyz answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("readyz is JSON"))
}

/// Polls `/readyz` (asserting 200 every time) until `done` holds for its body; returns that body.
async fn ready_until(app_base: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(app_base).await;
        assert_eq!(status, 200, "/readyz stays 200 while waiting for {what}: {body}");
        if done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what} never showed: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn age(body: &Value, doc: &str) -> u64 {
    body[format!("ave_{doc}_age_seconds")].as_u64().expect("age present")
}

async fn avemint_own_documents_answer(app: &TestApp) {
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
    ] {
        let resp = app.http.get(app.url(path)).send().await.expect("answers");
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn ave_down_across_the_cache_expiry_keeps_the_instance_ready_and_sessions_served() {
    let app = TestApp::spawn_with(Options {
        client: short_ttl(),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    let (status, body) = readyz(&app.address).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok", "{body}");
    assert_eq!(body["ave_metadata_ttl_seconds"], 1);
    assert_eq!(body["ave_jwks_stale"], false);

    // Ave goes away entirely (its port is closed) and stays away across the expiry.
    app.emulator.clone().shutdown().await;
    let down_at = Instant::now();
    let body = ready_until(&app.address, "stale discovery and JWKS at least 2 s old", |b| {
        b["ave_jwks_stale"] == true
            && b["ave_discovery_stale"] == true
            && age(b, "jwks") >= 2
            && age(b, "discovery") >= 2
    })
    .await;
    assert!(down_at.elapsed() >= TTL, "the cache expired while Ave was down");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["ave_jwks"], true, "a stale copy is a loaded copy: {body}");
    assert_eq!(body["ave_discovery"], true);
    assert_eq!(body["store"], true);

    let jwks_age = support::metric_at(&app.address, r#"avemint_ave_metadata_age_seconds{document="jwks"}"#)
        .await
        .expect("JWKS age in /metrics");
    assert!(jwks_age >= 2.0, "age {jwks_age}");
    assert_eq!(
        support::metric_at(&app.address, r#"avemint_ave_metadata_stale{document="jwks"}"#).await,
        Some(1.0)
    );
    assert_eq!(
        support::metric_at(&app.address, r#"avemint_ave_metadata_stale{document="discovery"}"#).await,
        Some(1.0)
    );
    assert_eq!(support::metric_at(&app.address, "avemint_ready").await, Some(1.0));

    // The signed-in session keeps being served (Ave's access token is valid for an hour).
    for _ in 0..5 {
        let resp = app.post_token(&mut browser, true).await;
        assert_eq!(resp.status(), 200, "session served while Ave is down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sign-in starts from the stale discovery document (the browser then meets Ave's own outage).
    let resp = Browser::default().send(app.http.get(app.url("/auth/login"))).await;
    assert_eq!(
        resp.status(),
        302,
        "login redirect built from the last good discovery document"
    );
    avemint_own_documents_answer(&app).await;
    let (status, _) = readyz(&app.address).await;
    assert_eq!(
        status,
        200,
        "still ready {} s into the outage",
        down_at.elapsed().as_secs()
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failing_refetch_keeps_the_last_good_copy_and_a_healed_ave_makes_it_fresh_again() {
    let app = TestApp::spawn_with(Options {
        client: short_ttl(),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    // Ave answers 503 for its discovery document and JWKS (its token endpoint still works).
    app.emulator.set_metadata_failure(Some(503));
    let body = ready_until(&app.address, "a stale JWKS", |b| b["ave_jwks_stale"] == true).await;
    assert_eq!(body["status"], "degraded");
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    // A new sign-in validates Ave's id_token with the stale keys (same kid).
    let mut second = Browser::default();
    let resp = app.sign_in(&mut second, None).await;
    assert_eq!(resp.status(), 302, "sign-in completes with the last good JWKS");
    let fetches = app.emulator.jwks_fetches();

    app.emulator.set_metadata_failure(None);
    let body = ready_until(&app.address, "fresh documents", |b| b["status"] == "ok").await;
    assert_eq!(body["ave_jwks_stale"], false);
    assert_eq!(body["ave_discovery_stale"], false);
    assert!(age(&body, "jwks") <= 2, "{body}");
    assert!(app.emulator.jwks_fetches() > fetches, "the JWKS was fetched again");
    assert_eq!(
        support::metric_at(&app.address, r#"avemint_ave_metadata_stale{document="jwks"}"#).await,
        Some(0.0)
    );
    app.stop().await;
}

/// A closed loopback port (bound, then released).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

#[tokio::test]
async fn readiness_before_ave_was_ever_reached_is_503_and_turns_200_once_it_is() {
    let ave_addr = closed_port();
    let issuer = format!("http://{ave_addr}");
    let port = closed_port().port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (client_id, client_secret) = ("app_readiness", "readiness-test-secret");
    let ave = support::AveClientEnv {
        client_id: client_id.to_owned(),
        client_secret: client_secret.to_owned(),
        issuer: issuer.clone(),
    };
    let database_url = format!("sqlite://{}", dir.path().join("a.db").display());
    let mut child = support::serve_command(&ave, port, &database_url, &dir.path().join("keys"))
        .env("AVEMINT_AVE_METADATA_TTL", "1")
        .spawn()
        .expect("avemint serve starts");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    support::wait_for_status(
        &format!("{base}/healthz"),
        200,
        Duration::from_secs(10),
        "avemint serve never answered",
    )
    .await;
    // Ave has never been reached: not ready, for seconds on end.
    for _ in 0..5 {
        let (status, body) = readyz(&base).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["ave_discovery"], false);
        assert_eq!(body["ave_jwks"], false);
        assert!(
            body.get("ave_jwks_age_seconds").is_none(),
            "no age without a copy: {body}"
        );
        assert_eq!(body["store"], true);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(support::metric_at(&base, "avemint_ready").await, Some(0.0));
    assert_eq!(
        support::metric_at(&base, r#"avemint_ave_metadata_loaded{document="jwks"}"#).await,
        Some(0.0)
    );
    // What does not need Ave still answers.
    for path in [
        "/healthz",
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
    ] {
        let resp = http.get(format!("{base}{path}")).send().await.expect("answers");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = http.get(format!("{base}/auth/login")).send().await.expect("answers");
    assert_eq!(resp.status(), 503, "sign-in needs Ave's discovery document");
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(error_code(resp).await, "temporarily_unavailable");

    // Ave appears where it was configured: the instance becomes ready on its own and signs users in.
    let emulator = Emulator::start(EmulatorConfig {
        listen: ave_addr,
        client_id: client_id.into(),
        client_secret: client_secret.into(),
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator on the configured port");
    support::wait_for_status(
        &format!("{base}/readyz"),
        200,
        Duration::from_secs(11),
        "ready within the start-up retry's 10 s cap",
    )
    .await;
    let (_, body) = readyz(&base).await;
    assert_eq!(body["status"], "ok", "{body}");
    let mut browser = Browser::default();
    sign_in_at(&http, &emulator, &base, &mut browser).await;
    let _ = child.kill();
    let _ = child.wait();
    emulator.shutdown().await;
}

/// A TCP proxy in front of one server; `stop` closes its port and cuts every
/// connection through it (a real outage as the client sees it), `resume`
/// listens on the same port again.
struct TcpProxy {
    addr: SocketAddr,
    target: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpProxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut proxy = Self {
            addr: listener.local_addr().expect("addr"),
            target,
            acceptor: None,
            connections: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (target, connections) = (self.target, self.connections.clone());
        self.acceptor = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                connections.lock().expect("lock").push(task);
            }
        }));
    }

    fn stop(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
        }
        for task in self.connections.lock().expect("lock").drain(..) {
            task.abort();
        }
    }

    async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind the same port");
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn a_store_outage_is_a_503_per_session_request_while_jwks_discovery_and_readiness_answer() {
    let Some(schema) = postgres_schema("a_store_outage_is_a_503_per_session_request").await else {
        return;
    };
    // The same schema, reached through a proxy that can be cut.
    let mut url = url::Url::parse(&database_url_string(&schema)).expect("url");
    let target = url.socket_addrs(|| Some(5432)).expect("resolves")[0];
    let mut proxy = TcpProxy::start(target).await;
    url.set_ip_host(proxy.addr.ip()).expect("host");
    url.set_port(Some(proxy.addr.port())).expect("port");
    let app = TestApp::spawn_with(Options {
        database_url: Some(DatabaseUrl::parse(url.as_str()).expect("postgres url")),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    assert_eq!(app.post_token(&mut browser, true).await.status(), 200);
    assert_eq!(support::metric_at(&app.address, "avemint_store_up").await, Some(1.0));

    proxy.stop();
    let stopped = Instant::now();
    // Checks are reused for a second; then `/readyz` sees the outage, stays 200 and answers promptly.
    let body = ready_until(&app.address, "store: false", |b| b["store"] == false).await;
    assert!(stopped.elapsed() < Duration::from_secs(3), "the store check is bounded");
    assert_eq!(body["status"], "degraded");
    // Past the in-process session cache (500 ms), every session request needs the store.
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(stopped.elapsed())).await;
    avemint_own_documents_answer(&app).await;
    let asked = Instant::now();
    let (status, _) = readyz(&app.address).await;
    assert_eq!(status, 200, "a store outage never flips readiness");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "no probe waits long for a dead store"
    );
    assert_eq!(support::metric_at(&app.address, "avemint_store_up").await, Some(0.0));
    assert_eq!(support::metric_at(&app.address, "avemint_ready").await, Some(1.0));

    let resp = app.post_token(&mut browser, true).await;
    assert_eq!(resp.status(), 503, "the session request, not the instance, fails");
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert_eq!(error_code(resp).await, "temporarily_unavailable");
    // Still fine after the session request failed.
    avemint_own_documents_answer(&app).await;
    assert_eq!(readyz(&app.address).await.0, 200);

    // The store comes back: the same session is served again, nothing was lost.
    proxy.resume().await;
    let healed = Instant::now();
    loop {
        let status = app.post_token(&mut browser, true).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(healed.elapsed() < Duration::from_secs(20), "the session came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = ready_until(&app.address, "the store answering again", |b| b["store"] == true).await;
    assert_eq!(body["status"], "ok", "{body}");
    app.stop().await;
}

/// A syntactically valid RS256 token naming `kid`, with junk signature.
fn forged(emulator: &Emulator, kid: &str) -> String {
    use base64::Engine as _;
    let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let claims = json!({"iss": emulator.issuer(), "aud": emulator.client_id(), "sub": "u1", "iat": Clock::System.now(), "exp": Clock::System.now() + std::time::Duration::from_secs(300), "nonce": "n"});
    format!("{}.{}.{}", enc(&json!({"alg":"RS256","kid":kid})), enc(&claims), "c2ln")
}

#[tokio::test]
async fn a_failed_unknown_kid_refetch_keeps_the_old_keys_and_the_interval_still_holds() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.expect("emulator");
    let cooldown = Duration::from_millis(400);
    let client = AveClient::new(
        Issuer::parse(&emulator.issuer()).expect("issuer"),
        emulator.client_id().to_owned(),
        Secret::new(emulator.client_secret().to_owned()),
        ClientOptions {
            jwks_refetch_cooldown: cooldown,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let kid = emulator.current_kid();
    assert!(client.key_set().await.expect("keys").find(Some(&kid)).is_some());
    assert_eq!(emulator.jwks_fetches(), 1);

    emulator.set_metadata_failure(Some(503));
    let err = id_token::validate(
        &client,
        &forged(&emulator, "rotated?"),
        NonceCheck::Expect("n"),
        Clock::System.now(),
    )
    .await
    .expect_err("unknown kid");
    assert!(matches!(err, IdTokenError::Keys(_)), "the re-fetch failed: {err}");
    let keys = client.key_set().await.expect("the old keys are still there");
    assert!(
        keys.find(Some(&kid)).is_some(),
        "Ave's known key survived the failed re-fetch"
    );
    let status = client.metadata_status();
    assert!(status.jwks.loaded && !status.jwks.stale && status.jwks.consecutive_failures == 1);
    // Inside the interval: no second re-fetch, just "unknown key".
    let err = id_token::validate(
        &client,
        &forged(&emulator, "another"),
        NonceCheck::Expect("n"),
        Clock::System.now(),
    )
    .await
    .expect_err("unknown kid");
    assert!(matches!(err, IdTokenError::UnknownKey), "{err}");

    emulator.set_metadata_failure(None);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let err = id_token::validate(
        &client,
        &forged(&emulator, "still-unknown"),
        NonceCheck::Expect("n"),
        Clock::System.now(),
    )
    .await
    .expect_err("unknown kid");
    assert!(matches!(err, IdTokenError::UnknownKey), "{err}");
    assert_eq!(emulator.jwks_fetches(), 2, "one successful re-fetch per interval");
    assert_eq!(client.metadata_status().jwks.consecutive_failures, 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn serving_a_stale_copy_logs_one_warning_per_document_and_no_secret() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.expect("emulator");
    let port = closed_port().port();
    let base = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let session_keys = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
    let database_url = format!("sqlite://{}", dir.path().join("a.db").display());
    let mut child = support::serve_command(
        &support::AveClientEnv::of(&emulator),
        port,
        &database_url,
        &dir.path().join("keys"),
    )
    .env("AVEMINT_SESSION_KEYS", session_keys)
    .env("AVEMINT_AVE_METADATA_TTL", "1")
    .env("AVEMINT_LOG_FORMAT", "json")
    .env("RUST_LOG", "debug")
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("avemint serve starts");
    wait_ready(&base).await;
    emulator.clone().shutdown().await;
    // Several failed re-fetches per document (the back-off is capped at the 1 s lifetime).
    let body = ready_until(&base, "stale documents, several failures in", |b| {
        b["ave_jwks_stale"] == true && b["ave_discovery_stale"] == true && age(b, "jwks") >= 4
    })
    .await;
    assert_eq!(body["status"], "degraded");
    let _ = child.kill();
    let output = child.wait_with_output().expect("stderr");
    let log = String::from_utf8_lossy(&output.stderr);
    let warnings: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("serving the last good copy"))
        })
        .collect();
    for document in ["discovery", "jwks"] {
        let of_doc: Vec<&Value> = warnings
            .iter()
            .filter(|w| w["fields"]["document"] == document)
            .collect();
        assert_eq!(of_doc.len(), 1, "one warning a minute for {document}: {log}");
        assert_eq!(of_doc[0]["level"], "WARN");
        assert!(of_doc[0]["fields"]["age_secs"].as_u64().is_some(), "{}", of_doc[0]);
        assert!(of_doc[0]["fields"]["error"].as_str().is_some(), "{}", of_doc[0]);
    }
    for secret in [emulator.client_secret().as_str(), session_keys] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}
