//! docs/token-profiles.md's Node (`jose`) and Python (`PyJWT`) verification snippets, kept in
//! `examples/node/verify.mjs` and `examples/python/verify.py`, run against a live
//! avemint with a real app JWT. Each test installs its library into its own
//! temporary directory (npm / pip `--target`). Without node/npm or python3/pip the
//! tests skip with a message, except under `CI=true`, where they fail. The
//! introspection snippets (`examples/node/introspect.mjs`,
//! `examples/python/introspect.py`) need no library and follow a logout.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use serde_json::json;
use support::{Options, TestApp};

const AUDIENCE: &str = "https://api.example.com";

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect("repository file")
}

/// The documentation (`doc`, a file of the repository) shows exactly the code that is tested.
fn assert_in_doc(doc: &str, path: &str) {
    assert!(
        repo_file(doc).contains(&repo_file(path)),
        "{doc} must contain {path} verbatim (in a code block)"
    );
}

fn run(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a verifier script with `token` on stdin, off the async runtime (avemint answers its JWKS request).
async fn verify(cmd: Command, app: &TestApp, audience: &str, token: &str) -> Output {
    let (address, audience, token) = (app.address.clone(), audience.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || verify_blocking(cmd, &address, &audience, &token))
        .await
        .expect("verifier thread")
}

fn verify_blocking(mut cmd: Command, address: &str, audience: &str, token: &str) -> Output {
    cmd.env("AVEMINT_URL", address).env("API_AUDIENCE", audience);
    run_with_stdin(cmd, token)
}

/// Runs a script with `token` on stdin and waits for it (blocking).
fn run_with_stdin(mut cmd: Command, token: &str) -> Output {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("script starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(token.as_bytes())
        .expect("token written");
    child.wait_with_output().expect("script ends")
}

async fn app_jwt(app: &TestApp) -> String {
    let mut browser = app.signed_in_browser().await;
    let body: Value = app.post_token(&mut browser, true).await.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

/// Accepts a real token (printing its claims), refuses it for another audience and refuses garbage.
async fn check(app: &TestApp, script: impl Fn() -> Command) {
    let token = app_jwt(app).await;
    let ok = verify(script(), app, AUDIENCE, &token).await;
    assert!(
        ok.status.success(),
        "a real app JWT verifies: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let claims: Value = serde_json::from_slice(&ok.stdout).expect("claims JSON on stdout");
    let expected = app.verify(&token).await.claims;
    assert_eq!(claims["sub"], expected["sub"]);
    assert_eq!(claims["iss"], app.address.as_str());
    let wrong_aud = verify(script(), app, "https://other.example.com", &token).await;
    assert!(!wrong_aud.status.success(), "another audience is refused");
    let garbage = verify(script(), app, AUDIENCE, "not.a.jwt").await;
    assert!(!garbage.status.success(), "garbage is refused");
    let (head, sig) = token.rsplit_once('.').expect("jws");
    let flipped = if sig.starts_with('A') { 'B' } else { 'A' };
    let tampered = verify(script(), app, AUDIENCE, &format!("{head}.{flipped}{}", &sig[1..])).await;
    assert!(!tampered.status.success(), "a bad signature is refused");
}

#[tokio::test]
async fn the_node_snippet_verifies_app_jwts() {
    assert_in_doc("docs/token-profiles.md", "examples/node/verify.mjs");
    if !support::tool_available("node", "--version") || !support::tool_available("npm", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut npm = Command::new("npm");
    npm.current_dir(dir.path())
        .args(["install", "--no-audit", "--no-fund", "--silent", "jose@6"]);
    run(npm, "npm install jose");
    std::fs::write(dir.path().join("verify.mjs"), repo_file("examples/node/verify.mjs")).expect("copy");
    let app = TestApp::spawn().await;
    check(&app, || {
        let mut node = Command::new("node");
        node.current_dir(dir.path()).arg("verify.mjs");
        node
    })
    .await;
}

#[tokio::test]
async fn the_python_snippet_verifies_app_jwts() {
    assert_in_doc("docs/token-profiles.md", "examples/python/verify.py");
    if !support::tool_available("python3", "--version") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
    ])
    .arg(&site)
    .arg("PyJWT[crypto]>=2.10,<3");
    run(pip, "pip install PyJWT[crypto]");
    std::fs::write(dir.path().join("verify.py"), repo_file("examples/python/verify.py")).expect("copy");
    let app = TestApp::spawn().await;
    check(&app, || {
        let mut python = Command::new("python3");
        python.current_dir(dir.path()).env("PYTHONPATH", &site).arg("verify.py");
        python
    })
    .await;
}

const INTROSPECTION_SECRET: &str = "snippet introspection secret/0123456789+%";

/// Runs an introspection snippet with `token` on stdin; returns its exit status and printed answer.
async fn introspect(app: &TestApp, mut cmd: Command, token: &str) -> (bool, Value) {
    cmd.env("AVEMINT_URL", &app.address)
        .env("INTROSPECTION_PROFILE", "api")
        .env("INTROSPECTION_SECRET", INTROSPECTION_SECRET);
    let token = token.to_owned();
    let out = tokio::task::spawn_blocking(move || run_with_stdin(cmd, &token))
        .await
        .expect("snippet thread");
    let answer = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("JSON on stdout: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), answer)
}

#[tokio::test]
async fn the_introspection_snippets_follow_logout() {
    assert_in_doc("docs/sessions.md", "examples/node/introspect.mjs");
    assert_in_doc("docs/sessions.md", "examples/python/introspect.py");
    let node = support::tool_available("node", "--version");
    let python = support::tool_available("python3", "--version");
    if !node && !python {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("introspect.mjs"),
        repo_file("examples/node/introspect.mjs"),
    )
    .expect("copy");
    std::fs::write(
        dir.path().join("introspect.py"),
        repo_file("examples/python/introspect.py"),
    )
    .expect("copy");
    let app = TestApp::spawn_with(Options {
        token_toml: Some(format!(
            "[[profiles]]\nname = \"api\"\naudience = \"{AUDIENCE}\"\n[profiles.introspection]\nsecret = \"{INTROSPECTION_SECRET}\"\n"
        )),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let body: Value = app.post_token(&mut browser, true).await.json().await.expect("json");
    let token = body["access_token"].as_str().expect("token").to_owned();
    let scripts = || {
        let mut list = Vec::new();
        if node {
            let mut cmd = Command::new("node");
            cmd.current_dir(dir.path()).arg("introspect.mjs");
            list.push(cmd);
        }
        if python {
            let mut cmd = Command::new("python3");
            cmd.current_dir(dir.path()).arg("introspect.py");
            list.push(cmd);
        }
        list
    };
    for cmd in scripts() {
        let (ok, answer) = introspect(&app, cmd, &token).await;
        assert!(ok, "{answer}");
        assert_eq!(answer["active"], true);
        assert_eq!(answer["sub"], app.verify(&token).await.claims["sub"]);
    }
    let resp = browser
        .send(app.http.post(app.url("/auth/logout")).header("X-CSRF", "1"))
        .await;
    assert!(resp.status().is_success());
    for cmd in scripts() {
        let (ok, answer) = introspect(&app, cmd, &token).await;
        assert!(!ok, "an ended session's token is refused");
        assert_eq!(answer, json!({"active": false}));
    }
}

const FRONT_SECRET: &str = "front-exchange-secret-0123456789abcdef";
const FRONT: &str = "https://front.example";

/// An app JWT of the API's profile delegated by the `front` profile through the token service (RFC 8693): its
/// `act.sub` is `FRONT`.
async fn delegated_token(app: &TestApp) -> String {
    let mut browser = app.signed_in_browser().await;
    let resp = app.post_token_json(&mut browser, &json!({"profile": "front"})).await;
    let body: Value = resp.json().await.expect("json");
    let front = body["access_token"].as_str().expect("token");
    let resp = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("front", Some(FRONT_SECRET))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", front),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("audience", AUDIENCE),
        ])
        .send()
        .await
        .expect("exchange");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    body["access_token"].as_str().expect("token").to_owned()
}

/// Both verifier snippets accept a delegated token only when its actor (`act.sub`) is in `API_TRUSTED_ACTORS`.
#[tokio::test]
async fn the_snippets_check_the_actor_of_delegated_tokens() {
    let node = support::tool_available("node", "--version") && support::tool_available("npm", "--version");
    let python = support::tool_available("python3", "--version");
    if !node && !python {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    if node {
        let mut npm = Command::new("npm");
        npm.current_dir(dir.path())
            .args(["install", "--no-audit", "--no-fund", "--silent", "jose@6"]);
        run(npm, "npm install jose");
        std::fs::write(dir.path().join("verify.mjs"), repo_file("examples/node/verify.mjs")).expect("copy");
    }
    if python {
        let mut pip = Command::new("python3");
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&site)
        .arg("PyJWT[crypto]>=2.10,<3");
        run(pip, "pip install PyJWT[crypto]");
        std::fs::write(dir.path().join("verify.py"), repo_file("examples/python/verify.py")).expect("copy");
    }
    let app = TestApp::spawn_with(Options {
        token_toml: Some(format!(
            r#"
[[profiles]]
name = "api"
audience = "{AUDIENCE}"
default = true

[[profiles]]
name = "front"
audience = "{FRONT}"
[profiles.exchange]
secret = "{FRONT_SECRET}"
may_exchange_to = ["api"]
"#
        )),
        ..Options::default()
    })
    .await;
    let token = delegated_token(&app).await;
    let scripts = |trusted: &str| {
        let mut list = Vec::new();
        if node {
            let mut cmd = Command::new("node");
            cmd.current_dir(dir.path())
                .arg("verify.mjs")
                .env("API_TRUSTED_ACTORS", trusted);
            list.push(cmd);
        }
        if python {
            let mut cmd = Command::new("python3");
            cmd.current_dir(dir.path())
                .env("PYTHONPATH", &site)
                .env("API_TRUSTED_ACTORS", trusted)
                .arg("verify.py");
            list.push(cmd);
        }
        list
    };
    for cmd in scripts(&format!("https://other.example,{FRONT}")) {
        let out = verify(cmd, &app, AUDIENCE, &token).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let claims: Value = serde_json::from_slice(&out.stdout).expect("claims JSON");
        assert_eq!(claims["act"], json!({"sub": FRONT}));
        assert_eq!(claims["aud"], AUDIENCE);
    }
    for cmd in scripts("https://other.example") {
        let out = verify(cmd, &app, AUDIENCE, &token).await;
        assert!(
            !out.status.success(),
            "a token delegated by an API not trusted is refused"
        );
    }
}
