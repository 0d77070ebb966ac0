//! avemint: sign single-page apps in with Ave (OpenID Connect) the safe way.
//!
//! A confidential OAuth client ("backend for frontend") that keeps Ave's tokens
//! server-side, encrypted at rest, and mints short-lived app JWTs that
//! downstream APIs verify against the JWKS avemint publishes.

pub mod ave;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod http;
mod log_gate;
pub mod metrics;
pub mod mint;
pub mod route;
pub mod secret;
pub mod server;
pub mod session;
pub mod signin;
pub mod startup;
pub mod telemetry;
pub mod traffic;
pub mod web_url;
