//! The Vite + React example (`examples/react-app/`) on the JS package (`clients/js/`): it installs the package,
//! type-checks against its declarations (`tsc --strict`) and builds with Vite, the package bundled in (a bundler
//! cannot import `/avemint.js` from avemint's origin; the package is what it imports). The build is what a Chromium
//! test serves with `[spa] root`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Copies `from` into `to`, leaving out installed modules, build output and tarballs.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "node_modules" || name == "dist" || name.ends_with(".tgz") {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&*name));
        } else {
            std::fs::copy(&path, to.join(&*name)).expect("copy");
        }
    }
}

/// The example built in a temporary copy of the two directories (so tests may build it side by side):
/// `npm ci && npm run build` with `VITE_API_PATH=api_path`. Returns the copy and its `dist/`.
pub fn build_example(api_path: &str) -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    copy_tree(&root.join("clients/js"), &dir.path().join("clients/js"));
    let app = dir.path().join("examples/react-app");
    copy_tree(&root.join("examples/react-app"), &app);
    for args in [&["ci", "--no-audit", "--no-fund"][..], &["run", "build"][..]] {
        let out = Command::new("npm")
            .current_dir(&app)
            .args(args)
            .env("VITE_API_PATH", api_path)
            .output()
            .expect("npm runs");
        assert!(
            out.status.success(),
            "npm {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dist = app.join("dist");
    (dir, dist)
}

#[test]
fn the_react_example_builds_with_the_package_bundled() {
    if !support::tool_available("node", "--version") || !support::tool_available("npm", "--version") {
        return;
    }
    let (_dir, dist) = build_example("/api/orders");
    let index = std::fs::read_to_string(dist.join("index.html")).expect("dist/index.html");
    // One module script, a content-hashed asset under /assets/ (what `[spa] root` serves as immutable).
    let script = index
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("a script in {index}"));
    assert!(
        script.starts_with("/assets/index-") && script.ends_with(".js"),
        "{script}"
    );
    let bundle = std::fs::read_to_string(dist.join(script.trim_start_matches('/'))).expect("the bundle");
    // The package's code is in the bundle (getUser's quiet probe, the logged-out event, the cross-tab channel),
    // nothing is fetched from avemint's `/avemint.js`, and the build-time API path is baked in.
    for needle in [
        "/auth/session?optional=1",
        "avemint:logged-out",
        "/auth/login?return_to=",
        "/api/orders",
    ] {
        assert!(bundle.contains(needle), "{needle} in the bundle");
    }
    assert!(
        !bundle.contains("/avemint.js"),
        "the app bundles the package, not the served module"
    );
    assert!(
        index.contains(r#"<link rel="icon" href="data:," />"#),
        "no /favicon.ico request (a 404 in the console)"
    );
}
