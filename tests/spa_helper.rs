//! The SPA helper `/avemint.js`: served by avemint (`serve` mode) and tested with
//! Node's built-in test runner (`tests/js/avemint.test.mjs`).

mod support;

use std::path::Path;
use std::process::Command;

use support::TestApp;

#[test]
fn the_helper_passes_its_node_tests() {
    if !support::tool_available("node", "--version") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .current_dir(root)
        .args(["--test", "tests/js/avemint.test.mjs"])
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
    assert!(!stdout.contains("# pass 0"), "no node test ran:\n{stdout}");
}

#[tokio::test]
async fn avemint_serves_the_helper_as_a_cacheable_module() {
    let app = TestApp::spawn().await;
    let resp = app.http.get(app.url("/avemint.js")).send().await.expect("helper");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/javascript; charset=utf-8");
    let cache = resp.headers()["cache-control"].to_str().expect("ascii");
    assert!(cache.contains("max-age=") && !cache.contains("no-store"), "{cache}");
    let body = resp.text().await.expect("text");
    let repo_copy = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http/assets/avemint.js"))
        .expect("helper source");
    assert_eq!(body, repo_copy, "the served helper is the one in the repository");
    for export in [
        "export function getToken",
        "export async function fetchWithToken",
        "export async function apiFetch",
        "export function configure",
        "export async function sessions",
        "export async function endSession",
        "export async function logout",
        "export async function watchSession",
        "export const events",
        "export const CHANNEL_NAME = 'avemint'",
    ] {
        assert!(body.contains(export), "{export}");
    }
    // Only GET: other methods fall through to the API's error shape.
    let post = app.http.post(app.url("/avemint.js")).send().await.expect("post");
    assert!(post.status().is_client_error(), "{}", post.status());
}
