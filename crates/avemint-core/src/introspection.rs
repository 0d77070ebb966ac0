//! Token introspection (RFC 7662) for downstream APIs: is this app JWT still good?
//!
//! Why it exists: an app JWT stays valid by signature until its `exp`, even
//! after its session ended (logout, expiry, deletion, the per-user cap). APIs
//! that must know sooner ask `POST /oauth/introspect`. The steps: the caller
//! authenticates as a token profile (its name and introspection secret); the
//! token must be avemint's (`mint::verify`), its `aud` must be the caller's
//! profile's — a caller never learns anything about another profile's tokens —
//! and its session must be live (`Sessions::is_live`, no call to Ave). A token of no
//! session (no `sid`: the token service's service and Ave-exchanged tokens) is active
//! until it expires.

use serde_json::{Map, Value};

use crate::mint::Minter;
use crate::mint::verify::{VerifyError, verify};
use crate::session::{Sessions, StoreError};

/// Why a caller was not authenticated (all map to 401 `invalid_client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("no profile has this name")]
    UnknownProfile,
    #[error("the profile has no introspection secret configured")]
    NotEnabled,
    #[error("wrong secret")]
    WrongSecret,
}

/// An introspection answer.
pub enum Answer {
    /// `{"active": false}`: not avemint's, expired, another profile's, or its session ended.
    Inactive(Inactive),
    /// The token's claims.
    Active(Map<String, Value>),
}

/// Why a token is inactive (logged at debug level, never answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inactive {
    Token(VerifyError),
    OtherProfile,
    SessionEnded,
}

/// Authenticates a caller as the profile `client_id`; returns the profile's audience.
pub fn authenticate(minter: &Minter, client_id: &str, secret: &str) -> Result<String, ClientError> {
    let profiles = minter.profiles();
    let profile = profiles.by_name(client_id).ok_or(ClientError::UnknownProfile)?;
    let expected = profile.introspection_secret.as_ref().ok_or(ClientError::NotEnabled)?;
    if expected.matches(secret) {
        Ok(profile.audience.clone())
    } else {
        Err(ClientError::WrongSecret)
    }
}

/// Introspects `token` for a caller authenticated for `audience` (its profile's).
pub async fn introspect(
    minter: &Minter,
    sessions: &Sessions,
    issuer: &str,
    audience: &str,
    token: &str,
) -> Result<Answer, StoreError> {
    let ring = minter.keys().current();
    let claims = match verify(&ring, token, issuer, sessions.now()) {
        Ok(claims) => claims,
        Err(e) => return Ok(Answer::Inactive(Inactive::Token(e))),
    };
    if claims.get("aud").and_then(Value::as_str) != Some(audience) {
        return Ok(Answer::Inactive(Inactive::OtherProfile));
    }
    let Some(sub) = claims.get("sub").and_then(Value::as_str) else {
        return Ok(Answer::Inactive(Inactive::SessionEnded));
    };
    let sid = match claims.get("sid") {
        Some(Value::String(sid)) => sid,
        // A token of no session (the token service's: a service's, or one exchanged from an Ave access token)
        // is good until it expires.
        None => return Ok(Answer::Active(claims)),
        Some(_) => return Ok(Answer::Inactive(Inactive::SessionEnded)),
    };
    if sessions.is_live(sub, sid).await? {
        Ok(Answer::Active(claims))
    } else {
        Ok(Answer::Inactive(Inactive::SessionEnded))
    }
}
