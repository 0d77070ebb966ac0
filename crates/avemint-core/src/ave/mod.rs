//! Everything that talks to Ave, or pretends to be Ave.
//!
//! `client` speaks Ave's real wire protocol (`docs/ave-protocol.md`) and
//! `id_token` validates what Ave signs (and `access_token` its access tokens, for the token service); `metadata` caches discovery and the JWKS, and `wire` holds what
//! `client` and `metadata` share (`AveError`, the documents, bounded reads); `settings` is what the client is
//! configured with (the Ave application, timeouts, token budget); `budget` and `backpressure` decide
//! whether a token call may go out at all. The local Ave that `avemint demo` and
//! the tests run against is its own crate, `crates/ave-emulator`.

pub mod access_token;
pub(crate) mod backpressure;
pub mod budget;
pub mod client;
pub mod id_token;
pub(crate) mod metadata;
pub mod settings;
pub(crate) mod wire;

pub(crate) use client::TokenPermit;
pub use client::{AveClient, TokenResponse};
pub use id_token::IdTokenError;
pub use metadata::{DocumentStatus, MetadataStatus};
pub use settings::ClientOptions;
pub use wire::{AveError, KeySet};
