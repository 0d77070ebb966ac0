//! avemint: sign single-page apps in with Ave (OpenID Connect) the safe way.
//!
//! A confidential OAuth client ("backend for frontend") that keeps Ave's tokens
//! server-side, encrypted at rest, and mints short-lived app JWTs that
//! downstream APIs verify against the JWKS avemint publishes.
//!
//! The API is what the `avemint` binary, the tests, benches and fuzz targets need from the top layer: settings
//! (`config`, with the HTTP layer's settings types), the application (`startup`), logging (`telemetry`), the demo
//! (`demo`), the `keys` commands, the container probe (`healthcheck`), the cookie reader (`http::cookies`) and the
//! OpenAPI documents. The protocol side is the `avemint-core` crate and the shared leaf types are
//! `avemint-base`; each is used through its own public API. The README's Layout table is the map.

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
