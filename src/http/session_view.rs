//! How a session is shown in the session lists: the signed-in user's own (`GET /auth/sessions`) and the admin
//! API's (`GET /admin/users/{sub}/sessions`).
//!
//! Why its own module: both APIs document and answer the same `SessionView`; neither handler module borrows it
//! from the other.

use poem_openapi::Object;

use avemint_core::session::SessionSummary;

/// One session as the session lists show it (the user's own, and the admin API's). Times are unix seconds.
#[derive(Object)]
pub(crate) struct SessionView {
    /// The session's id: the `sid` claim of its app JWTs, and what ends the session.
    pub id: String,
    /// When it was signed in.
    pub created_at: i64,
    /// When it was last used (recorded at most once a minute).
    pub last_seen_at: i64,
    /// When it ends unless used again (lifetime or idle timeout, whichever is first).
    pub expires_at: i64,
    /// Browser and operating system at sign-in, e.g. `Firefox on Linux`; absent when unknown or signed in
    /// before this was recorded.
    #[oai(skip_serializing_if_is_none)]
    pub device: Option<String>,
    /// The network signed in from: the client address's IPv4 /24 or IPv6 /48, e.g. `198.51.100.0/24`; absent
    /// when signed in before this was recorded.
    #[oai(skip_serializing_if_is_none)]
    pub network: Option<String>,
}

impl From<SessionSummary> for SessionView {
    fn from(s: SessionSummary) -> Self {
        Self {
            id: s.sid.as_str().to_owned(),
            created_at: s.created_at.as_secs(),
            last_seen_at: s.last_seen_at.as_secs(),
            expires_at: s.expires_at.as_secs(),
            device: s.signed_in_from.device,
            network: s.signed_in_from.network,
        }
    }
}
