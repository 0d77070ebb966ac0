//! Signing keys and the JWKS over their whole lifecycle: rotation that no
//! verifier notices, every algorithm verified with `jsonwebtoken` from the
//! served JWKS only, ETag/304, the `keys` commands, refusing exposed keys, and
//! a SIGHUP reload of a running binary under load that loses no request.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ave_emulator::{Emulator, EmulatorConfig};
use avemint_core::mint::keys::{Algorithm, KeyPolicy};
use serde_json::Value;
use support::{Browser, Options, SESSION_COOKIE, TestApp, keys_cmd, try_verify, verify_with, verify_with_alg};

const BIN: &str = env!("CARGO_BIN_EXE_avemint");
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "k", "oth"];

/// Runs `avemint keys …` on `dir` as a separate process.
fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

fn assert_public_only(jwks: &Value) {
    for jwk in jwks["keys"].as_array().expect("keys") {
        for m in PRIVATE_MEMBERS {
            assert!(jwk.get(m).is_none(), "private member {m} published: {jwk}");
        }
        assert_eq!(jwk["use"], "sig");
        assert!(jwk["kid"].is_string() && jwk["alg"].is_string() && jwk["kty"].is_string());
    }
}

async fn mint(app: &TestApp, b: &mut Browser) -> String {
    let resp = app.post_token(b, true).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

fn header_kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
}

/// `GET /.well-known/jwks.json`, with `If-None-Match` when given.
async fn get_jwks(app: &TestApp, if_none_match: Option<&str>) -> reqwest::Response {
    let mut req = app.http.get(app.url("/.well-known/jwks.json"));
    if let Some(tag) = if_none_match {
        req = req.header("If-None-Match", tag);
    }
    req.send().await.expect("jwks")
}

/// Polls the JWKS until its ETag differs from `old` (the 1 s change poll or SIGHUP picked the change up).
async fn wait_for_new_jwks(app: &TestApp, old: &str) -> (Value, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = get_jwks(app, None).await;
        let etag = resp.headers()["etag"].to_str().expect("ascii").to_owned();
        let body: Value = resp.json().await.expect("json");
        if etag != old {
            return (body, etag);
        }
        assert!(
            Instant::now() < deadline,
            "the running service never picked up the rotation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn rotation_is_invisible_to_verifiers_in_both_directions() {
    let app = TestApp::spawn().await;
    let mut b = app.signed_in_browser().await;
    let before_token = mint(&app, &mut b).await;
    let resp = get_jwks(&app, None).await;
    let old_etag = resp.headers()["etag"].to_str().expect("etag").to_owned();
    let jwks_before: Value = resp.json().await.expect("json");
    assert_eq!(
        kids(&jwks_before).len(),
        2,
        "current and next are published from the start"
    );
    assert_eq!(kids(&jwks_before)[0], header_kid(&before_token), "current key first");

    // Rotating right away needs --force: the next key is younger than the JWKS cache lifetime.
    let refused = keys_cmd(&app.keys_dir, &["rotate"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    let out = keys_cmd(&app.keys_dir, &["rotate", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (jwks_after, new_etag) = wait_for_new_jwks(&app, &old_etag).await;
    assert_public_only(&jwks_after);
    let after_token = mint(&app, &mut b).await;
    assert_ne!(header_kid(&after_token), header_kid(&before_token), "a new key signs");
    assert_eq!(
        header_kid(&after_token),
        kids(&jwks_before)[1],
        "the former next key signs"
    );

    // A token minted after the rotation verifies with the JWKS a verifier cached before it…
    verify_with(&jwks_before, &after_token, app.audience(), &app.address);
    // …and one minted before verifies with the JWKS served after it (the retired key is still published).
    verify_with(&jwks_after, &before_token, app.audience(), &app.address);
    assert_eq!(kids(&jwks_after).len(), 3, "current, next and retired");
    assert_ne!(old_etag, new_etag);

    // The cached copy's ETag now gets the new set; the new ETag gets 304.
    let stale = get_jwks(&app, Some(&old_etag)).await;
    assert_eq!(stale.status(), 200);
    let fresh = get_jwks(&app, Some(&new_etag)).await;
    assert_eq!(fresh.status(), 304);
    assert_eq!(fresh.headers()["etag"], new_etag.as_str());
    assert_eq!(fresh.headers()["cache-control"], "public, max-age=300");
    assert!(fresh.bytes().await.expect("body").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn jwks_is_cacheable_for_the_lead_time_with_etag_and_304() {
    let app = TestApp::spawn().await;
    let resp = get_jwks(&app, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "public, max-age=300");
    let etag = resp.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    assert_public_only(&resp.json().await.expect("json"));
    for inm in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"other\", {etag}"),
        "*".into(),
    ] {
        let resp = get_jwks(&app, Some(inm.as_str())).await;
        assert_eq!(resp.status(), 304, "{inm}");
    }
    let resp = get_jwks(&app, Some("\"something-else\"")).await;
    assert_eq!(resp.status(), 200);

    // Publishing a next key of another algorithm changes the ETag and the discovery document.
    let out = keys_cmd(&app.keys_dir, &["generate", "--alg", "eddsa"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (jwks, new_etag) = wait_for_new_jwks(&app, &etag).await;
    assert_ne!(new_etag, etag);
    let algs: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["alg"].as_str().expect("alg"))
        .collect();
    assert_eq!(algs, vec!["ES256", "EdDSA"], "the old next key was replaced");
    let discovery = app.get_json("/.well-known/openid-configuration").await;
    assert_eq!(
        discovery["app_jwt_signing_alg_values_supported"],
        serde_json::json!(["ES256", "EdDSA"])
    );
    // avemint issues no id_token: the OpenID member is not used for app JWTs.
    assert!(
        discovery.get("id_token_signing_alg_values_supported").is_none(),
        "{discovery}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_algorithm_mints_tokens_that_verify_with_only_the_served_jwks() {
    for (alg, jwt_alg, kty) in [
        (Algorithm::Es256, jsonwebtoken::Algorithm::ES256, "EC"),
        (Algorithm::EdDsa, jsonwebtoken::Algorithm::EdDSA, "OKP"),
        (Algorithm::Rs256, jsonwebtoken::Algorithm::RS256, "RSA"),
    ] {
        let app = TestApp::spawn_with(Options {
            signing: Some(KeyPolicy {
                algorithm: alg,
                rotation: None,
            }),
            ..Options::default()
        })
        .await;
        let mut b = app.signed_in_browser().await;
        let token = mint(&app, &mut b).await;
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, jwt_alg);
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let jwks = app.jwks().await;
        assert_public_only(&jwks);
        assert!(jwks["keys"].as_array().expect("keys").iter().all(|k| k["kty"] == kty));
        if alg == Algorithm::Rs256 {
            let n = jwks["keys"][0]["n"].as_str().expect("n");
            assert!(n.len() * 6 >= 2048, "RSA modulus of at least 2048 bits");
        }
        let data = verify_with_alg(&jwks, &token, app.audience(), &app.address, jwt_alg);
        assert_eq!(data.claims["iss"], app.address);
        // Pinning a different algorithm refuses the token.
        let other = if jwt_alg == jsonwebtoken::Algorithm::ES256 {
            jsonwebtoken::Algorithm::RS256
        } else {
            jsonwebtoken::Algorithm::ES256
        };
        assert!(try_verify(&jwks, &token, app.audience(), &app.address, other).is_err());
        let discovery: Value = app
            .http
            .get(app.url("/.well-known/openid-configuration"))
            .send()
            .await
            .expect("discovery")
            .json()
            .await
            .expect("json");
        assert_eq!(
            discovery["app_jwt_signing_alg_values_supported"],
            serde_json::json!([alg.jws()])
        );
        app.stop().await;
    }
}

#[test]
fn keys_commands_generate_list_rotate_and_prune() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("keys");
    let out = keys_cmd(&dir, &["generate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(current)"));
    let out = keys_cmd(&dir, &["generate", "--alg", "rs256"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(next)"));

    let out = keys_cmd(&dir, &["list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf8");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[0][..4], ["KID", "ALG", "STATE", "AGE"]);
    assert_eq!(rows[1][1..3], ["ES256", "current"], "{text}");
    assert_eq!(rows[2][1..3], ["RS256", "next"], "{text}");
    for row in &rows[1..] {
        assert_eq!(row[0].len(), 43, "a base64url SHA-256 thumbprint: {text}");
        assert!(row[3].ends_with('s') || row[3].ends_with('m'), "age: {text}");
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    assert_eq!(manifest["keys"][0]["kid"], rows[1][0]);

    let out = keys_cmd(&dir, &["rotate", "--force", "--alg", "eddsa"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(keys_cmd(&dir, &["list"]).stdout).expect("utf8");
    let states: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_owned(), f[2].to_owned())
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("RS256".into(), "current".into()),
            ("EdDSA".into(), "next".into()),
            ("ES256".into(), "retired".into())
        ],
        "{text}"
    );
    let out = keys_cmd(&dir, &["prune"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nothing to prune\n",
        "retired keys are kept"
    );
    let bad = keys_cmd(&dir, &["generate", "--alg", "hs256"]);
    assert!(!bad.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(&dir).expect("dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "pem") {
                let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
    }
}

#[test]
fn legacy_es256_files_are_listed_without_a_manifest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for created in [1_700_000_000u64, 1_700_100_000] {
        let der = Algorithm::Es256.generate_pkcs8().expect("gen");
        let path = tmp.path().join(format!("es256-{created}.pem"));
        std::fs::write(&path, pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()))).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
    let out = keys_cmd(tmp.path(), &["list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf8");
    let states: Vec<&str> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).expect("state"))
        .collect();
    assert_eq!(states, vec!["current", "retired"], "{text}");
    assert!(!tmp.path().join("manifest.json").exists(), "listing never writes");
}

#[cfg(unix)]
#[test]
fn serve_refuses_to_start_with_a_world_readable_key() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("keys");
    assert!(keys_cmd(&dir, &["generate"]).status.success());
    let pem = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .expect("a key");
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("AVE_CLIENT_ID", "app_x")
        .env("AVE_CLIENT_SECRET", "s")
        .env("AVE_ISSUER", "http://127.0.0.1:9")
        .env("AVEMINT_PUBLIC_URL", "http://127.0.0.1:9")
        .env("AVEMINT_LISTEN", "127.0.0.1:0")
        .env("AVEMINT_SESSION_KEYS", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .env(
            "AVEMINT_DATABASE_URL",
            format!("sqlite://{}", tmp.path().join("a.db").display()),
        )
        .env("AVEMINT_KEYS_DIR", &dir)
        .output()
        .expect("runs");
    assert!(!out.status.success(), "must not start");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by group or others") && err.contains("chmod 600"),
        "{err}"
    );
    // `keys list` refuses too, and a fixed mode works again.
    assert!(!keys_cmd(&dir, &["list"]).status.success());
    std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(keys_cmd(&dir, &["list"]).status.success());
}

#[tokio::test]
async fn sighup_reload_under_load_loses_no_request() {
    let port = support::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let emulator = Emulator::start(EmulatorConfig {
        redirect_uris: vec![format!("{base}/auth/callback")],
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let tmp = tempfile::tempdir().expect("tempdir");
    let keys_dir = tmp.path().join("keys");
    let (child, log) = support::serve_logged(&emulator, port, tmp.path(), |cmd| {
        cmd.env_remove("RUST_LOG");
    })
    .await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // Sign in once through the binary, like a browser.
    let mut browser = Browser::default();
    support::sign_in_at(&http, &emulator, &base, &mut browser).await;
    let cookie = format!(
        "{SESSION_COOKIE}={}",
        browser.get(SESSION_COOKIE).expect("session cookie")
    );
    let jwks_before: Value = support::get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
    let old_kids = kids(&jwks_before);

    // A few clients hammer the JWKS and the token endpoint until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (http, base, cookie, stop, done) = (http.clone(), base.clone(), cookie.clone(), stop.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut signing_kids = std::collections::BTreeSet::new();
            let mut published = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                if i % 2 == 0 {
                    match http.get(format!("{base}/.well-known/jwks.json")).send().await {
                        Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                            Ok(v) => published.extend(kids(&v)),
                            Err(e) => failures.push(format!("jwks body: {e}")),
                        },
                        Ok(r) => failures.push(format!("jwks status {}", r.status())),
                        Err(e) => failures.push(format!("jwks: {e}")),
                    }
                } else {
                    let req = http
                        .post(format!("{base}/auth/token"))
                        .header("X-CSRF", "1")
                        .header("Cookie", &cookie);
                    match req.send().await {
                        Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                            Ok(v) => {
                                signing_kids.insert(header_kid(v["access_token"].as_str().unwrap_or_default()));
                            }
                            Err(e) => failures.push(format!("token body: {e}")),
                        },
                        Ok(r) => failures.push(format!("token status {}", r.status())),
                        Err(e) => failures.push(format!("token: {e}")),
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (failures, signing_kids, published)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another process rotates; the service is told with SIGHUP.
    let out = keys_cmd(&keys_dir, &["rotate", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(keys_dir.join("manifest.json")).expect("manifest")).expect("json");
    let new_next = manifest["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["state"] == "next")
        .and_then(|k| k["kid"].as_str())
        .expect("a new next key")
        .to_owned();
    assert!(!old_kids.contains(&new_next));
    // Keep the load on until the new key set is being served, then a little longer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = support::get_json(&http, &format!("{base}/.well-known/jwks.json")).await;
        if kids(&v).contains(&new_next) {
            break;
        }
        assert!(Instant::now() < deadline, "the new key never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut signing = std::collections::BTreeSet::new();
    let mut published = std::collections::BTreeSet::new();
    for c in clients {
        let (failures, s, p) = c.await.expect("client");
        assert!(failures.is_empty(), "failed requests during reload: {failures:?}");
        signing.extend(s);
        published.extend(p);
    }
    assert!(done.load(Ordering::Relaxed) > 20, "the clients did make requests");
    assert!(published.contains(&new_next), "the new next key was served under load");
    assert!(
        signing.contains(&old_kids[0]) && signing.contains(&old_kids[1]),
        "tokens signed before and after: {signing:?}"
    );
    drop(child);
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(
        log.contains("SIGHUP: reloading the configuration, secrets and signing keys"),
        "SIGHUP was handled, not fatal: {log}"
    );
}

/// `avemint keys …` run by root in a directory another user owns gives every file it writes to that owner (mode
/// 0600 kept), so the service running as the owner still reads them; run by any other user it changes nothing and
/// prints the command to run instead. Needs root (the tests run as root here); skipped otherwise.
#[cfg(unix)]
#[test]
fn keys_commands_keep_the_owner_of_the_directory_or_refuse_with_the_command_to_run() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().expect("tempdir");
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, b"").expect("probe");
    if std::fs::metadata(&probe).expect("probe").uid() != 0 {
        eprintln!("skipped: not running as root");
        return;
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = tmp.path().join("keys");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    let owned_by_nobody = |what: &str| {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("meta");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (65534, 65534),
                "{what}: {} keeps the directory's owner",
                entry.path().display()
            );
            assert_eq!(
                meta.mode() & 0o777,
                0o600,
                "{what}: {} stays private",
                entry.path().display()
            );
        }
    };
    for args in [&["generate"][..], &["generate"], &["rotate", "--force"], &["prune"]] {
        let out = keys_cmd(&dir, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        owned_by_nobody(&args.join(" "));
    }
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest");
    // Another user (neither root nor the owner) is refused before anything changes.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            BIN,
            "keys",
            "rotate",
            "--force",
        ])
        .env_clear()
        .env("AVEMINT_KEYS_DIR", &dir)
        .output()
        .expect("setpriv runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("belongs to nobody") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(
        err.contains(&format!("instead run: sudo -u nobody {BIN} keys rotate --force")),
        "the exact command: {err}"
    );
    assert_eq!(std::fs::read(dir.join("manifest.json")).expect("manifest"), manifest);
    owned_by_nobody("after the refusal");
}
