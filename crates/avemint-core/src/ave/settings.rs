//! What the Ave client is configured with: the registered application (client
//! id, secret, issuer, scopes) and how avemint talks to Ave (`ClientOptions`).
//! `config` fills these in from the environment and the file; `AveClient` and
//! the sign-in flow consume them.

use std::time::Duration;

use avemint_base::reload::SecretFile;
use avemint_base::secret::Secret;
use avemint_base::web_url::Issuer;

/// Default scopes requested from Ave.
pub const DEFAULT_SCOPES: &str = "openid profile email offline_access";
/// How long discovery and JWKS documents are used before a re-fetch, unless
/// configured (`AVEMINT_AVE_METADATA_TTL`).
pub(crate) const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(300);

/// Checks a client secret (at start-up and on every reload): not empty.
pub fn parse_client_secret(raw: &str) -> Result<Secret<String>, String> {
    match raw.trim() {
        "" => Err("must not be empty".into()),
        s => Ok(Secret::new(s.to_owned())),
    }
}

/// The registered Ave application and how to reach it.
#[derive(Debug, Clone)]
pub struct AveSettings {
    /// `AVE_CLIENT_ID`.
    pub client_id: String,
    /// `AVE_CLIENT_SECRET`.
    pub client_secret: Secret<String>,
    /// `AVE_CLIENT_SECRET_FILE`: where it was read from (re-read when it changes and on SIGHUP).
    pub client_secret_file: Option<SecretFile>,
    /// `AVE_ISSUER`.
    pub issuer: Issuer,
    /// `AVEMINT_SCOPES`, normalised (single spaces, `openid` included).
    pub scopes: String,
    /// Timeouts, the token budget, the refresh timeout and the documents' lifetime.
    pub options: ClientOptions,
}

/// How avemint talks to Ave: timeouts, its token-endpoint budget, how long a
/// refresh waits, how long Ave's documents are used. Defaults are production's;
/// tests shorten them.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// The timeout of other calls to Ave, and the longest wait for room in the token budget.
    pub request_timeout: Duration,
    /// The least time between two JWKS re-fetches caused by an unknown `kid`.
    pub jwks_refetch_cooldown: Duration,
    /// Token-endpoint calls per minute this process may make.
    pub token_budget_per_minute: u32,
    /// How long a refresh may wait for Ave's answer, from the moment it is
    /// sent, before its outcome counts as unknown (the refresh token is then
    /// kept, and retried once the refresh marker's deadline has passed).
    pub refresh_timeout: Duration,
    /// How long Ave's discovery document and JWKS are used before a re-fetch
    /// (a failed re-fetch keeps the last good copy; see `metadata`).
    pub metadata_ttl: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            jwks_refetch_cooldown: Duration::from_secs(5),
            token_budget_per_minute: 180,
            refresh_timeout: Duration::from_secs(60),
            metadata_ttl: DEFAULT_METADATA_TTL,
        }
    }
}

/// Why `AVEMINT_SCOPES` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopesError {
    #[error("must include `openid` (avemint needs Ave's id_token)")]
    NoOpenid,
    #[error("`{0}` delivers keys in the URL fragment, which a server-side client never sees")]
    FragmentDelivered(String),
}

/// Parses a space-separated scope list; `openid` is required, Ave's `e2ee:`
/// scopes are refused.
pub fn parse_scopes(s: &str) -> Result<String, ScopesError> {
    let scopes: Vec<&str> = s.split_whitespace().collect();
    if !scopes.contains(&"openid") {
        return Err(ScopesError::NoOpenid);
    }
    if let Some(bad) = scopes.iter().find(|s| s.starts_with("e2ee:")) {
        return Err(ScopesError::FragmentDelivered((*bad).to_owned()));
    }
    Ok(scopes.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_must_include_openid() {
        assert_eq!(parse_scopes("profile email"), Err(ScopesError::NoOpenid));
        assert_eq!(parse_scopes(" openid  email ").as_deref(), Ok("openid email"));
        assert!(parse_scopes("openid e2ee:x").is_err());
    }
}
