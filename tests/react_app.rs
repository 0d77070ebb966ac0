//! The Vite + React example (`examples/react-app/`) on the JS package (`clients/js/`): it installs the package,
//! type-checks against its declarations (`tsc --strict`) and builds with Vite, the package bundled in (a bundler
//! cannot import `/avemint.js` from avemint's origin; the package is what it imports). The build is what a Chromium
//! test serves with `[spa] root`.

mod support;

#[test]
fn the_react_example_builds_with_the_package_bundled() {
    if !support::tool_available("node", "--version") || !support::tool_available("npm", "--version") {
        return;
    }
    let (_dir, dist) = support::build_example("/api/orders");
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
