//! Everything that talks to Ave, or pretends to be Ave.
//!
//! `client` speaks Ave's real wire protocol (`docs/ave-protocol.md`),
//! `id_token` validates what Ave signs, and `emulator` is the local Ave that
//! `avemint demo` and the tests run against.

pub mod budget;
pub mod client;
pub mod emulator;
pub mod id_token;
pub mod metadata;

pub use client::{AveClient, AveError, ClientOptions, KeySet, ProviderMetadata, TokenResponse};
pub use id_token::{IdTokenError, NonceCheck, ValidatedIdToken};
pub use metadata::{Document, DocumentStatus, MetadataStatus};
