//! The emulator's in-memory "database". Codes and tokens are keyed by their
//! SHA-256 hex digest; the plaintext values only ever exist in responses.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::crypto::IssuerKey;
use super::{IdTokenDefect, RecordedTokenRequest, TokenFailure};

/// An issued authorization code (Ave's `AuthorizationCodeRecord`).
#[derive(Debug, Clone)]
pub(super) struct CodeRecord {
    pub(super) client_id: String,
    /// WHATWG-normalised redirect URI used at authorize time.
    pub(super) redirect_uri: String,
    pub(super) user_id: String,
    /// The scope string exactly as requested.
    pub(super) scope: String,
    /// Non-empty nonce, if any.
    pub(super) nonce: Option<String>,
    /// Non-empty code challenge, if any.
    pub(super) code_challenge: Option<String>,
    /// `Some("S256" | "plain")` or `None` (verified as plain).
    pub(super) code_challenge_method: Option<String>,
    pub(super) expires_at: Instant,
}

/// An opaque access token.
#[derive(Debug, Clone)]
pub(super) struct AccessRecord {
    pub(super) user_id: String,
    pub(super) scope: String,
    pub(super) expires_at: Instant,
}

/// A refresh token (Ave's `oauth_refresh_tokens` row).
#[derive(Debug, Clone)]
pub(super) struct RefreshRecord {
    pub(super) client_id: String,
    pub(super) user_id: String,
    pub(super) scope: String,
    pub(super) family_id: u64,
    pub(super) expires_at: Instant,
    /// Set when rotated, or when it expired and was presented.
    pub(super) revoked: bool,
}

/// A fixed 60-second rate-limit window (Ave's fallback limiter semantics).
#[derive(Debug, Clone, Copy)]
pub(super) struct RateWindow {
    pub(super) count: u32,
    /// Unix milliseconds at which the window resets.
    pub(super) reset_at_ms: u64,
}

/// Everything mutable. Guarded by one `std::sync::Mutex`, never held across
/// an `.await`.
pub(super) struct State {
    /// The client's current secret: starts as the configured one; a rotation replaces it with no overlap, as in
    /// Ave (docs/ave-protocol.md §1.6).
    pub(super) client_secret: String,
    pub(super) redirect_uris: Vec<String>,
    pub(super) auto_approve: Option<String>,
    pub(super) id_token_defect: Option<IdTokenDefect>,
    pub(super) token_failure: Option<TokenFailure>,
    /// Status the discovery document and the JWKS answer with instead of 200.
    pub(super) metadata_failure: Option<u16>,
    pub(super) signing_key: Arc<IssuerKey>,
    /// Key for [`IdTokenDefect::UnpublishedKid`]; never published.
    pub(super) rogue_key: Option<Arc<IssuerKey>>,
    pub(super) codes: HashMap<String, CodeRecord>,
    pub(super) access_tokens: HashMap<String, AccessRecord>,
    pub(super) refresh_tokens: HashMap<String, RefreshRecord>,
    /// Families flagged for reuse (`reuse_detected_at` set).
    pub(super) flagged_families: HashSet<u64>,
    pub(super) next_family_id: u64,
    /// Keyed by lowercased client_id.
    pub(super) rate_windows: HashMap<String, RateWindow>,
    pub(super) token_requests: Vec<RecordedTokenRequest>,
    pub(super) jwks_fetches: usize,
    /// Raw values of every token handed out by the token endpoint, kept only
    /// so that leak tests can search for them (see `Emulator::issued_tokens`).
    /// Lookups never use this list.
    pub(super) issued_tokens: Vec<String>,
    /// Refresh tokens (by digest) in requests being handled right now, with
    /// how many requests carry each.
    pub(super) refresh_presenting: HashMap<String, usize>,
    /// How many times a refresh token arrived while another request with the
    /// same token was still being handled.
    pub(super) concurrent_refresh_presentations: usize,
    /// Base URL advertised for the token, userinfo and JWKS endpoints (a proxy
    /// in front of the emulator); `None`: the server's own.
    pub(super) advertised_base_url: Option<String>,
}

impl State {
    pub(super) fn new(client_secret: String, redirect_uris: Vec<String>, signing_key: IssuerKey) -> State {
        State {
            client_secret,
            redirect_uris,
            auto_approve: None,
            id_token_defect: None,
            token_failure: None,
            metadata_failure: None,
            signing_key: Arc::new(signing_key),
            rogue_key: None,
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            flagged_families: HashSet::new(),
            next_family_id: 1,
            rate_windows: HashMap::new(),
            token_requests: Vec::new(),
            jwks_fetches: 0,
            issued_tokens: Vec::new(),
            refresh_presenting: HashMap::new(),
            concurrent_refresh_presentations: 0,
            advertised_base_url: None,
        }
    }

    /// Drops records that can no longer matter, so long demo sessions do not
    /// grow without bound. Expired codes are kept for a grace period so that
    /// "Authorization code expired" stays observable.
    pub(super) fn prune(&mut self, now: Instant) {
        let grace = std::time::Duration::from_secs(3600);
        self.codes.retain(|_, code| {
            code.expires_at
                .checked_add(grace)
                .is_none_or(|keep_until| keep_until > now)
        });
        self.access_tokens.retain(|_, token| token.expires_at > now);
    }
}

/// `now + ttl`, saturating at a far-future instant instead of panicking.
pub(super) fn deadline(now: Instant, ttl: std::time::Duration) -> Instant {
    now.checked_add(ttl)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}
