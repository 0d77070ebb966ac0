//! Who is calling, and how often: the client address behind trusted proxies
//! (`client_ip`) and the per-client and per-network limits on sign-in
//! (`rate_limit`), and the coarse device and network labels a session list shows (`device`).
//!
//! This is policy over addresses, header text and counts, with no HTTP type:
//! `http` adapts each request to it (peer address and forwarding header values
//! in, a client address and a verdict out), and the sign-in flow asks the
//! code-exchange limiter before it spends Ave's budget.

pub mod client_ip;
pub mod device;
pub mod rate_limit;
