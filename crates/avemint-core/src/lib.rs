//! avemint-core: the protocol side of avemint, between the HTTP layer above and `avemint-base` below.
//!
//! A crate of its own so that Cargo holds the direction: it cannot import the HTTP layer (poem, the router,
//! cookies, the composition root), because it does not depend on the `avemint` crate, and it knows the shared
//! leaf types only through `avemint-base`.
//!
//! Components (no use case imports back into them): `ave` (Ave's client), `session` (sessions, sealing, the
//! stores), `mint` (app JWTs and signing keys), `traffic` (client addresses, rate limits). Use cases over
//! them: `signin` (the authorization-code flow), `session::renew` and `session::manage`, `proxy` (proxy mode),
//! `introspection` (RFC 7662), `token_service` (`POST /oauth/token`: client credentials and token exchange).
//!
//! The public items are what the `avemint` crate, its tests, benches, fuzz targets and examples use: the API
//! between the layers, documented where it is declared, not a stable library API.

// Components.
pub mod ave;
pub mod mint;
pub mod session;
pub mod traffic;

// Use cases.
pub mod introspection;
pub mod proxy;
pub mod signin;
pub mod token_service;
