//! Minting app JWTs: avemint's own short-lived tokens for downstream APIs.
//!
//! `KeyRing` holds the signing keys and the JWKS; `claims` renders configured
//! claims; `Minter` puts registered and configured claims together and signs.

pub mod claims;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::secret::random_bytes;
use claims::ClaimTemplate;
pub use keys::{KeyError, KeyRing};

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

/// A signed app JWT.
pub struct MintedToken {
    pub token: String,
    pub expires_in: u64,
}

/// Signs app JWTs with the configured issuer, audience, lifetime and claims.
pub struct Minter {
    keys: Arc<KeyRing>,
    issuer: String,
    audience: String,
    client_id: String,
    ttl: Duration,
    claims: ClaimTemplate,
}

impl Minter {
    /// Builds a minter.
    pub fn new(
        keys: Arc<KeyRing>,
        issuer: String,
        audience: String,
        client_id: String,
        ttl: Duration,
        claims: ClaimTemplate,
    ) -> Self {
        Self {
            keys,
            issuer,
            audience,
            client_id,
            ttl,
            claims,
        }
    }

    /// The key ring (for the JWKS endpoint).
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// Mints a token for `subject` at `now` (unix seconds).
    pub fn mint(&self, subject: &Subject<'_>, now: u64) -> Result<MintedToken, KeyError> {
        let mut claims = Map::new();
        self.claims.render_into(subject.id_token, subject.user, &mut claims);
        let ttl = self.ttl.as_secs();
        claims.insert("iss".into(), Value::from(self.issuer.as_str()));
        claims.insert("sub".into(), Value::from(subject.sub));
        claims.insert("aud".into(), Value::from(self.audience.as_str()));
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(now + ttl));
        claims.insert("jti".into(), Value::from(URL_SAFE_NO_PAD.encode(random_bytes::<16>())));
        claims.insert("sid".into(), Value::from(subject.sid));
        claims.insert("client_id".into(), Value::from(self.client_id.as_str()));
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Generation)?;
        let token = self.keys.signing_key().sign(&payload)?;
        Ok(MintedToken { token, expires_in: ttl })
    }
}
