//! Validation of Ave's `access_token_jwt` (`docs/ave-protocol.md` §4.2), for the token service's exchange of Ave
//! access tokens (RFC 8693) into app JWTs.
//!
//! Exactly as Ave's own API accepts such a token (§4.2, `resolveAccessTokenRecord`), plus the header checks of
//! id_tokens: RS256 only (pinned: `none` and HMAC are refused before a key is touched), no `jku`/`x5u`/`jwk`/
//! `x5c`/`crit`, the key from Ave's JWKS by `kid` (one rate-limited re-fetch for an unknown one), header `typ`
//! exactly `JWT` (as Ave writes it, §4.2), `iss` Ave's issuer, `aud` Ave's resource audience (a string; in
//! production the issuer, `https://aveid.net`, §0 — so an id_token, whose `aud` is a client id, is refused),
//! `exp` in the future with no leeway (an exchanged token never outlives it), `iat` not in the future (30 s of
//! skew), and `sub` and `cid` present. Which clients' tokens may be exchanged is the caller's decision.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::client::AveClient;
use super::id_token::{LEEWAY_SECS, inspect_header};
use super::wire::{AveError, KeySet};
use avemint_base::clock::UnixTime;

/// An Ave access token whose signature and claims were checked.
#[derive(Debug, Clone)]
pub struct ValidatedAccessToken {
    /// Ave's subject (the identity UUID).
    pub sub: String,
    /// The Ave client the token was issued to (`cid`).
    pub cid: String,
    /// When it expires.
    pub exp: UnixTime,
    /// Its claims, without the protocol ones (`iss`, `aud`, `exp`, `iat`, `nbf`): `sub`, `scope`, `cid`, `uid`,
    /// organisation claims.
    pub claims: Map<String, Value>,
}

/// Why an Ave access token was refused. Messages name the check, never token content.
#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    #[error("it is not a JWT Ave signs (malformed, or header `typ` is not `JWT`)")]
    Malformed,
    #[error("it uses a forbidden algorithm or header (only RS256 is accepted)")]
    Forbidden,
    #[error("it is signed with a key Ave does not publish")]
    UnknownKey,
    #[error("its signature is invalid")]
    BadSignature,
    #[error("its issuer is not Ave's")]
    Issuer,
    #[error("its audience is not Ave's resource audience")]
    Audience,
    #[error("it has expired")]
    Expired,
    #[error("it was issued in the future")]
    IssuedInFuture,
    #[error("it lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("Ave's signing keys could not be loaded: {0}")]
    Keys(#[from] AveError),
}

/// Validates `token` against Ave's JWKS (loaded by `client`, cached) at `now`.
pub async fn validate_access_token(
    client: &AveClient,
    token: &str,
    now: UnixTime,
) -> Result<ValidatedAccessToken, AccessTokenError> {
    let kid = inspect_header(token).map_err(|_| AccessTokenError::Forbidden)?;
    let mut keys = client.key_set().await?;
    if keys.find(kid.as_deref()).is_none() {
        // Ave may have rotated: one re-fetch, rate limited, then give up.
        keys = client.refetch_key_set().await?.ok_or(AccessTokenError::UnknownKey)?;
    }
    validate_with_keys(&keys, client.issuer().as_str(), client.issuer().as_str(), token, now)
}

/// The whole validation against a key set already in memory (no network, no state). `audience` is Ave's
/// resource audience.
pub fn validate_with_keys(
    keys: &KeySet,
    issuer: &str,
    audience: &str,
    token: &str,
    now: UnixTime,
) -> Result<ValidatedAccessToken, AccessTokenError> {
    let kid = inspect_header(token).map_err(|_| AccessTokenError::Forbidden)?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| AccessTokenError::Malformed)?;
    if header.typ.as_deref() != Some("JWT") {
        return Err(AccessTokenError::Malformed);
    }
    let key = keys.find(kid.as_deref()).ok_or(AccessTokenError::UnknownKey)?;
    let mut v = Validation::new(Algorithm::RS256);
    v.algorithms = vec![Algorithm::RS256];
    // Time is checked below against the caller's `now`.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| match e.into_kind() {
        ErrorKind::InvalidSignature => AccessTokenError::BadSignature,
        ErrorKind::InvalidIssuer => AccessTokenError::Issuer,
        ErrorKind::InvalidAudience => AccessTokenError::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AccessTokenError::Forbidden,
        ErrorKind::MissingRequiredClaim(_) => AccessTokenError::MissingClaim("exp, iat, iss, aud or sub"),
        _ => AccessTokenError::Malformed,
    })?;
    let mut claims = data.claims;
    // Ave writes `aud` as a string (§4.2): an array is not its access token.
    if !claims.get("aud").is_some_and(Value::is_string) {
        return Err(AccessTokenError::Audience);
    }
    let now_secs = now.as_unsigned();
    // Numbers only: a string-typed `exp` is missing, not "valid forever".
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(AccessTokenError::MissingClaim("exp"))?;
    if exp <= now_secs {
        return Err(AccessTokenError::Expired);
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or(AccessTokenError::MissingClaim("iat"))?;
    if iat > (now_secs + LEEWAY_SECS) as f64 {
        return Err(AccessTokenError::IssuedInFuture);
    }
    let text = |name: &'static str| match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(AccessTokenError::MissingClaim(name)),
    };
    let sub = text("sub")?;
    let cid = text("cid")?;
    for protocol in ["iss", "aud", "exp", "iat", "nbf"] {
        claims.remove(protocol);
    }
    Ok(ValidatedAccessToken {
        sub,
        cid,
        exp: UnixTime::from_unsigned(exp),
        claims,
    })
}
