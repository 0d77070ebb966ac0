//! avemint-base: the bottom layer of avemint, the leaf types and shared services every other layer may use.
//!
//! A crate of its own so that Cargo holds the direction: nothing here can import the protocol side
//! (`avemint-core`) or the HTTP side (`avemint`), because this crate does not depend on them. Modules are
//! listed leaf first; `metrics` reads the route table, `reload` records into `metrics`, nothing imports back.
//!
//! The public items are what the crates above use: the API between the layers, not a stable library API.

pub mod clock;
pub mod log_gate;
pub mod route;
pub mod secret;
pub mod trace_context;
pub mod web_url;

pub mod metrics;
pub mod reload;
