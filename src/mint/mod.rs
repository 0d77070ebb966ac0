//! Minting app JWTs: avemint's own short-lived tokens for downstream APIs.
//!
//! `keys` manages the signing keys (lifecycle on disk, the live `KeyRing` and
//! its JWKS); `claims` renders configured claims; `profiles` says which tokens
//! exist (audience, lifetime, claims, hook); `hook` asks an operator's service
//! for extra claims; `Minter` puts registered, configured and hook claims
//! together for a profile and signs with the current key.

pub mod claims;
pub mod hook;
pub mod keys;
pub mod profiles;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::secret::{Secret, random_bytes};
use hook::{FailurePolicy, HookError};
pub use keys::{KeyError, KeyRing, Keys};
pub use profiles::{Profile, Profiles};

/// The identity a token is minted for: what a session knows about its user.
pub struct Subject<'a> {
    /// Ave's `sub`.
    pub sub: &'a str,
    /// The `sid` claim (an opaque session handle).
    pub sid: &'a str,
    /// Claims of the newest validated id_token.
    pub id_token: &'a Map<String, Value>,
    /// Ave's `user` object from sign-in, if any.
    pub user: Option<&'a Map<String, Value>>,
}

/// A signed app JWT (a bearer credential: redacted in `Debug`, zeroized on drop).
pub struct MintedToken {
    pub token: Secret<String>,
    pub expires_in: u64,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The profile's hook failed and its policy is `deny`.
    #[error("the claims hook of profile `{profile}` failed: {source}")]
    Hook { profile: String, source: HookError },
    /// The signed token is over the configured size limit.
    #[error("the token of profile `{profile}` would be {size} bytes, over the limit of {limit}")]
    TooLarge { profile: String, size: usize, limit: usize },
}

/// An app JWT's claims: the registered ones avemint sets, then the profile's
/// and the hook's (which never carry a registered name: configuration refuses
/// them and `hook::merge` drops them), serialized without building a map.
#[derive(serde::Serialize)]
struct Payload<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    sid: &'a str,
    client_id: &'a str,
    #[serde(flatten)]
    custom: &'a Map<String, Value>,
}

/// Signs app JWTs for a profile: registered claims, the profile's claim map
/// and its hook's claims.
pub struct Minter {
    keys: Arc<Keys>,
    issuer: String,
    client_id: String,
    profiles: Profiles,
    max_token_bytes: usize,
}

impl Minter {
    /// Builds a minter.
    pub fn new(keys: Arc<Keys>, issuer: String, client_id: String, profiles: Profiles, max_token_bytes: usize) -> Self {
        Self {
            keys,
            issuer,
            client_id,
            profiles,
            max_token_bytes,
        }
    }

    /// The live keys (for the JWKS endpoint and the reload watcher).
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    /// The token profiles.
    pub fn profiles(&self) -> &Profiles {
        &self.profiles
    }

    /// Mints a `profile` token for `subject` at `now` (unix seconds).
    pub async fn mint(&self, profile: &Profile, subject: &Subject<'_>, now: u64) -> Result<MintedToken, MintError> {
        let mut claims = Map::new();
        profile.claims.render_into(subject.id_token, subject.user, &mut claims);
        if let Some(hook) = &profile.hook {
            match hook.enrich(subject.sid, subject.sub, &claims, &profile.audience).await {
                Ok(extra) => {
                    let refused = hook::merge(&extra, &mut claims);
                    if !refused.is_empty() {
                        tracing::warn!(profile = profile.name.as_str(), claims = ?refused, "claims hook tried to set registered claims; ignored");
                    }
                }
                Err(e) if hook.policy() == FailurePolicy::Omit => {
                    tracing::warn!(profile = profile.name.as_str(), error = %e, "claims hook failed; minting without its claims");
                }
                Err(e) => {
                    tracing::warn!(profile = profile.name.as_str(), error = %e, "claims hook failed; token refused");
                    return Err(MintError::Hook {
                        profile: profile.name.clone(),
                        source: e,
                    });
                }
            }
        }
        let ttl = profile.ttl.as_secs();
        let jti = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
        let payload = Payload {
            iss: &self.issuer,
            sub: subject.sub,
            aud: &profile.audience,
            iat: now,
            exp: now + ttl,
            jti: &jti,
            sid: subject.sid,
            client_id: &self.client_id,
            custom: &claims,
        };
        let payload = serde_json::to_vec(&payload).map_err(|_| KeyError::Generation)?;
        let token = self.keys.current().signing_key().sign(&payload)?;
        if token.len() > self.max_token_bytes {
            return Err(MintError::TooLarge {
                profile: profile.name.clone(),
                size: token.len(),
                limit: self.max_token_bytes,
            });
        }
        Ok(MintedToken {
            token: Secret::new(token),
            expires_in: ttl,
        })
    }
}
