//! avemint: sign single-page apps in with Ave (OpenID Connect) the safe way.
//!
//! A confidential OAuth client ("backend for frontend") that keeps Ave's tokens
//! server-side, encrypted at rest, and mints short-lived app JWTs that
//! downstream APIs verify against the JWKS avemint publishes.
//!
//! The API is what the `avemint` binary needs: settings (`config`), the
//! application (`startup`), logging (`telemetry`), the demo (`demo`), the
//! `keys` commands, the container probe (`healthcheck`) and the OpenAPI
//! document. Everything else is private to the crate; tests, benches, fuzz
//! targets and examples reach it through the hidden `testing` door. The
//! README's Layout table is the map.

// Entry points and wiring: the API.
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod healthcheck;
pub mod startup;
pub mod telemetry;

// HTTP: private to the crate, except the cookie reader (fuzz targets and benches drive it) and the
// docs page's inline elements (tests hash them against its Content-Security-Policy).
pub mod http;
mod server;

pub use avemint_base::clock::Clock;
pub use http::admin::openapi_yaml as admin_openapi_yaml;
pub use http::openapi_yaml;

/// The `avemint keys` commands and what they take.
pub mod keys {
    pub use avemint_core::mint::keys::{Algorithm, KeyDir, commands};
}
