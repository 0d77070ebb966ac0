//! Minting app JWTs: avemint's own short-lived tokens for downstream APIs.
//!
//! `keys` manages the signing keys (lifecycle on disk, the live `KeyRing` and
//! its JWKS); `claims` renders configured claims; `profiles` says which tokens
//! exist (audience, lifetime, claims, hook); `hook` asks an operator's service
//! for extra claims; `Minter` puts registered, configured and hook claims
//! together for a profile and signs with the current key; `verify` checks
//! that a token is one of avemint's (for introspection).

pub mod claims;
pub mod hook;
pub mod keys;
pub mod profiles;
pub(crate) mod verify;

use std::cell::RefCell;
use std::sync::{Arc, PoisonError, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use avemint_base::clock::{Clock, UnixTime};
pub use avemint_base::secret::{Secret, fill_random};
use hook::{FailurePolicy, HookError};
pub use keys::{KeyError, LiveKeys};
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

/// The identity a token-service token (`POST /oauth/token`) is minted for: unlike a browser session's
/// [`Subject`], it may have no session (`sid`: a service's token, one exchanged from an Ave access token), names its
/// own `client_id`, may carry an actor chain (`act`, RFC 8693 §4.1) and may not outlive its subject token.
pub struct Issue<'a> {
    /// The `sub` claim.
    pub sub: &'a str,
    /// The `sid` claim, when the token belongs to a session (delegation).
    pub sid: Option<&'a str>,
    /// The `client_id` claim.
    pub client_id: &'a str,
    /// What `{id_token.NAME}` references read (for an Ave-exchanged token: the Ave access token's claims).
    pub id_token: &'a Map<String, Value>,
    /// What `{user.NAME}` references read.
    pub user: Option<&'a Map<String, Value>>,
    /// The `act` claim.
    pub act: Option<&'a Value>,
    /// `exp` is at most this (the subject token's own `exp`).
    pub not_after: Option<UnixTime>,
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
    /// The claims could not be serialized to JSON.
    #[error("the token's claims could not be serialized")]
    ClaimsEncoding,
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
struct Payload<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    /// Absent for tokens of no session (token service).
    sid: Option<&'a str>,
    client_id: &'a str,
    /// The actor chain of a delegated token (token service).
    act: Option<&'a Value>,
    custom: CustomClaims<'a>,
}

/// The configured (and hook) claims of one token.
enum CustomClaims<'a> {
    /// No hook: the profile's claims, borrowed from the template and the session.
    Rendered(&'a Profile, &'a Map<String, Value>, Option<&'a Map<String, Value>>),
    /// With a hook: rendered, then merged with what the hook answered.
    Merged(Map<String, Value>),
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("iss", self.iss)?;
        map.serialize_entry("sub", self.sub)?;
        map.serialize_entry("aud", self.aud)?;
        map.serialize_entry("iat", &self.iat)?;
        map.serialize_entry("exp", &self.exp)?;
        map.serialize_entry("jti", self.jti)?;
        if let Some(sid) = self.sid {
            map.serialize_entry("sid", sid)?;
        }
        map.serialize_entry("client_id", self.client_id)?;
        if let Some(act) = self.act {
            map.serialize_entry("act", act)?;
        }
        match &self.custom {
            CustomClaims::Rendered(profile, id_token, user) => {
                for (name, value) in profile.claims.rendered(id_token, *user) {
                    map.serialize_entry(name, value)?;
                }
            }
            CustomClaims::Merged(claims) => {
                for (name, value) in claims {
                    map.serialize_entry(name, value)?;
                }
            }
        }
        map.end()
    }
}

/// 16 random bytes for a token's `jti`. They come from the system CSPRNG
/// (aws-lc) like every random value in avemint, fetched 1 KiB at a time per
/// thread: one call per token would cost more than the rest of the claims. A
/// `jti` is public (it is in the token), so holding it in a buffer is harmless.
fn jti_bytes() -> [u8; 16] {
    const BATCH: usize = 64;
    thread_local! {
        static POOL: RefCell<(usize, [[u8; 16]; BATCH])> = const { RefCell::new((BATCH, [[0; 16]; BATCH])) };
    }
    POOL.with_borrow_mut(|(next, pool)| {
        if *next == BATCH {
            fill_random(pool.as_flattened_mut());
            *next = 0;
        }
        let bytes = pool[*next];
        *next += 1;
        bytes
    })
}

/// Signs app JWTs for a profile: registered claims, the profile's claim map
/// and its hook's claims.
pub struct Minter {
    keys: Arc<LiveKeys>,
    issuer: String,
    client_id: String,
    /// Replaced whole when the configuration is reloaded (SIGHUP); each request works with one snapshot.
    profiles: RwLock<Arc<Profiles>>,
    max_token_bytes: usize,
    /// Sets `iat`/`exp` and the hook's timestamp.
    clock: Clock,
}

impl Minter {
    /// Builds a minter.
    pub fn new(
        keys: Arc<LiveKeys>,
        issuer: String,
        client_id: String,
        profiles: Profiles,
        max_token_bytes: usize,
        clock: Clock,
    ) -> Self {
        Self {
            keys,
            issuer,
            client_id,
            profiles: RwLock::new(Arc::new(profiles)),
            max_token_bytes,
            clock,
        }
    }

    /// The live keys (for the JWKS endpoint and the reload watcher).
    pub fn keys(&self) -> &Arc<LiveKeys> {
        &self.keys
    }

    /// The token profiles in use (a snapshot: a reload swaps in a new set, never changes this one).
    pub fn profiles(&self) -> Arc<Profiles> {
        self.profiles.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `profiles` in use from the next request on (a configuration reload); requests already running keep
    /// the set they started with.
    pub fn replace_profiles(&self, profiles: Profiles) {
        *self.profiles.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(profiles);
    }

    /// Mints a `profile` token for `subject`, issued now by the minter's clock.
    #[tracing::instrument(name = "mint", skip_all, fields(profile = profile.name.as_str()))]
    pub async fn mint(&self, profile: &Profile, subject: &Subject<'_>) -> Result<MintedToken, MintError> {
        let issue = Issue {
            sub: subject.sub,
            sid: Some(subject.sid),
            client_id: &self.client_id,
            id_token: subject.id_token,
            user: subject.user,
            act: None,
            not_after: None,
        };
        self.sign_for(profile, &issue).await
    }

    /// Mints a `profile` token for the token service (`POST /oauth/token`): `issue` says who it is for. The hook's
    /// answers are cached per session, or per `sub` for a token of no session.
    #[tracing::instrument(name = "mint", skip_all, fields(profile = profile.name.as_str()))]
    pub async fn mint_issue(&self, profile: &Profile, issue: &Issue<'_>) -> Result<MintedToken, MintError> {
        self.sign_for(profile, issue).await
    }

    /// What `mint` and `mint_issue` do, inside their span.
    async fn sign_for(&self, profile: &Profile, issue: &Issue<'_>) -> Result<MintedToken, MintError> {
        let now = self.clock.now();
        let custom = match &profile.hook {
            None => CustomClaims::Rendered(profile, issue.id_token, issue.user),
            Some(hook) => {
                let mut claims = Map::new();
                profile.claims.render_into(issue.id_token, issue.user, &mut claims);
                // A `sid` never contains `:`, so a token of no session cannot share a session's cache entry.
                let cache_key = match issue.sid {
                    Some(sid) => std::borrow::Cow::Borrowed(sid),
                    None => std::borrow::Cow::Owned(format!("sub:{}", issue.sub)),
                };
                match hook
                    .enrich(&cache_key, issue.sub, &claims, &profile.audience, now)
                    .await
                {
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
                CustomClaims::Merged(claims)
            }
        };
        let exp = match issue.not_after {
            Some(cap) => (now + profile.ttl).min(cap),
            None => now + profile.ttl,
        };
        let jti = URL_SAFE_NO_PAD.encode(jti_bytes());
        let payload = Payload {
            iss: &self.issuer,
            sub: issue.sub,
            aud: &profile.audience,
            iat: now.as_unsigned(),
            exp: exp.as_unsigned(),
            jti: &jti,
            sid: issue.sid,
            client_id: issue.client_id,
            act: issue.act,
            custom,
        };
        let payload = serde_json::to_vec(&payload).map_err(|_| MintError::ClaimsEncoding)?;
        let ring = self.keys.current();
        let key = ring.signing_key();
        let token = {
            let _sign = tracing::info_span!("mint.sign", kid = key.kid(), alg = ?key.alg()).entered();
            key.sign(&payload)?
        };
        if token.len() > self.max_token_bytes {
            return Err(MintError::TooLarge {
                profile: profile.name.clone(),
                size: token.len(),
                limit: self.max_token_bytes,
            });
        }
        Ok(MintedToken {
            token: Secret::new(token),
            expires_in: exp.saturating_duration_since(now).as_secs(),
        })
    }

    /// The issuer of every app JWT (`iss`: the public URL).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn jtis_are_distinct_across_batches() {
        // Four batches' worth on this thread, and more on others: no repeats, never all zero.
        let mut seen: HashSet<[u8; 16]> = (0..256).map(|_| jti_bytes()).collect();
        assert_eq!(seen.len(), 256);
        let others = std::thread::spawn(|| (0..100).map(|_| jti_bytes()).collect::<Vec<_>>())
            .join()
            .expect("thread");
        for jti in others {
            assert!(seen.insert(jti), "a jti repeated across threads");
        }
        assert!(!seen.contains(&[0; 16]));
    }
}
