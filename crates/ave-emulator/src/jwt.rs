//! Minting Ave's RS256 JWTs (id_token and access_token_jwt, with Ave's header,
//! claims and claim order) and verifying access JWTs for userinfo. Also where
//! the hostile id_token defects (unsigned, HS256 keyed with the public key,
//! wrong audience, …) are forged, which is why this crate never ships in the
//! `serve` binary.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::crypto::{self, CryptoFailure, IssuerKey, JwsHeader, JwsSigner};

use crate::scopes::has_scope;
use crate::{EmulatedUser, IdTokenDefect, Shared};

// ---------------------------------------------------------------------------
// JWT minting (§4)
// ---------------------------------------------------------------------------

/// Which grant an id_token is minted for (only the code grant has a nonce).
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdTokenNonce<'a> {
    CodeGrant(Option<&'a str>),
    RefreshGrant,
}

pub(crate) struct MintedJwts {
    pub(crate) id_token: String,
    pub(crate) access_token_jwt: String,
}

/// id_token claims in Ave's order. `None` = omitted; `Some(None)` = `null`.
#[derive(Serialize)]
pub(crate) struct IdTokenClaims {
    pub(crate) iss: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sub: Option<String>,
    pub(crate) aud: Value,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    pub(crate) auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) azp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) picture: Option<Option<String>>,
}

/// access_token_jwt claims in Ave's order.
#[derive(Serialize)]
pub(crate) struct AccessTokenClaims<'a> {
    pub(crate) iss: &'a str,
    pub(crate) sub: &'a str,
    pub(crate) aud: &'a str,
    pub(crate) exp: i64,
    pub(crate) iat: i64,
    pub(crate) scope: &'a str,
    pub(crate) cid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) uid: Option<String>,
}

/// The audience used by [`IdTokenDefect::WrongAudience`] and
/// [`IdTokenDefect::AudienceArrayWithoutAzp`].
pub(crate) const OTHER_CLIENT: &str = "other-client";

pub(crate) fn mint_jwts(
    shared: &Shared,
    user: &EmulatedUser,
    scope: &str,
    nonce: IdTokenNonce<'_>,
) -> Result<MintedJwts, CryptoFailure> {
    let (key, rogue_key, defect) = {
        let state = shared.lock();
        (
            Arc::clone(&state.signing_key),
            state.rogue_key.clone(),
            state.id_token_defect,
        )
    };
    let client_id = shared.config.client_id.as_str();
    let issuer = shared.issuer.as_str();
    let ttl = i64::try_from(shared.access_ttl_secs()).unwrap_or(i64::MAX / 4);
    let now = unix_secs();

    let access_token_jwt = crypto::compact_jws(
        &JwsHeader {
            alg: "RS256",
            typ: "JWT",
            kid: Some(key.kid()),
        },
        &AccessTokenClaims {
            iss: issuer,
            sub: &user.id,
            aud: issuer,
            exp: now.saturating_add(ttl),
            iat: now,
            scope,
            cid: client_id,
            uid: has_scope(scope, "user_id").then(|| crypto::account_id_for(&user.id)),
        },
        JwsSigner::Rs256(&key),
    )?;

    let (iat, exp) = match defect {
        Some(IdTokenDefect::Expired) => {
            let exp = now - 600;
            (exp.saturating_sub(ttl), exp)
        }
        Some(IdTokenDefect::IssuedInFuture) => (now + 600, (now + 600).saturating_add(ttl)),
        _ => (now, now.saturating_add(ttl)),
    };
    let iss = match defect {
        Some(IdTokenDefect::WrongIssuer) => "https://evil.example".to_owned(),
        Some(IdTokenDefect::IssuerPrefix) => format!("{issuer}evil"),
        _ => issuer.to_owned(),
    };
    let (aud, azp) = match defect {
        Some(IdTokenDefect::WrongAudience) => (Value::from(OTHER_CLIENT), Some(OTHER_CLIENT.to_owned())),
        Some(IdTokenDefect::AudienceArrayWithoutAzp) => (
            Value::Array(vec![Value::from(client_id), Value::from(OTHER_CLIENT)]),
            None,
        ),
        _ => (Value::from(client_id), Some(client_id.to_owned())),
    };
    let real_nonce = match nonce {
        IdTokenNonce::CodeGrant(nonce) => nonce.filter(|n| !n.is_empty()).map(str::to_owned),
        IdTokenNonce::RefreshGrant => None,
    };
    let nonce = match defect {
        Some(IdTokenDefect::WrongNonce) => Some(format!("wrong-{}", crypto::random_token43()?)),
        Some(IdTokenDefect::MissingNonce) => None,
        _ => real_nonce,
    };
    let profile = has_scope(scope, "profile");
    let claims = IdTokenClaims {
        iss,
        sub: (defect != Some(IdTokenDefect::MissingSub)).then(|| user.id.clone()),
        aud,
        exp,
        iat,
        auth_time: iat,
        azp,
        nonce,
        name: profile.then(|| user.display_name.clone()),
        preferred_username: profile.then(|| user.handle.clone()),
        email: has_scope(scope, "email").then(|| user.email.clone()),
        picture: profile.then(|| user.avatar_url.clone()),
    };

    let public_pem;
    let rogue;
    let (header, signer) = match defect {
        Some(IdTokenDefect::BadSignature) => (
            JwsHeader {
                alg: "RS256",
                typ: "JWT",
                kid: Some(key.kid()),
            },
            JwsSigner::Rs256Corrupted(&key),
        ),
        Some(IdTokenDefect::AlgNone) => (
            JwsHeader {
                alg: "none",
                typ: "JWT",
                kid: Some(key.kid()),
            },
            JwsSigner::Unsigned,
        ),
        Some(IdTokenDefect::Hs256WithPublicKey) => {
            public_pem = key.public_key_pem().as_bytes().to_vec();
            (
                JwsHeader {
                    alg: "HS256",
                    typ: "JWT",
                    kid: Some(key.kid()),
                },
                JwsSigner::Hs256(&public_pem),
            )
        }
        Some(IdTokenDefect::UnpublishedKid) => {
            rogue = rogue_key.ok_or(CryptoFailure)?;
            (
                JwsHeader {
                    alg: "RS256",
                    typ: "JWT",
                    kid: Some(rogue.kid()),
                },
                JwsSigner::Rs256(&rogue),
            )
        }
        _ => (
            JwsHeader {
                alg: "RS256",
                typ: "JWT",
                kid: Some(key.kid()),
            },
            JwsSigner::Rs256(&key),
        ),
    };
    let id_token = crypto::compact_jws(&header, &claims, signer)?;
    Ok(MintedJwts {
        id_token,
        access_token_jwt,
    })
}

/// An `access_token_jwt` exactly as Ave's token endpoint mints it (§4.2: header, claims and their order) for
/// `user_id`, issued to `client_id` with `scope`, valid from `iat` to `exp`.
pub(crate) fn access_jwt_for(
    shared: &Shared,
    user_id: &str,
    client_id: &str,
    scope: &str,
    iat: i64,
    exp: i64,
) -> Result<String, CryptoFailure> {
    let key = Arc::clone(&shared.lock().signing_key);
    let issuer = shared.issuer.as_str();
    crypto::compact_jws(
        &JwsHeader {
            alg: "RS256",
            typ: "JWT",
            kid: Some(key.kid()),
        },
        &AccessTokenClaims {
            iss: issuer,
            sub: user_id,
            aud: issuer,
            exp,
            iat,
            scope,
            cid: client_id,
            uid: has_scope(scope, "user_id").then(|| crypto::account_id_for(user_id)),
        },
        JwsSigner::Rs256(&key),
    )
}

/// Verifies an `access_token_jwt`-style token as Ave's `verifyJwt` does and
/// returns its claims. `Err(true)` means the header was not JSON (Ave answers
/// 400 "Invalid JSON body"); `Err(false)` means simply invalid.
pub(crate) fn verify_access_jwt(key: &IssuerKey, issuer: &str, token: &str) -> Result<Map<String, Value>, bool> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(false);
    };
    let header_json: Value = crypto::b64url_decode(header)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(true)?;
    if header_json.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(false);
    }
    let signature = crypto::b64url_decode(signature).ok_or(false)?;
    let signing_input = &token[..header.len() + 1 + payload.len()];
    if !key.verify_rs256(signing_input.as_bytes(), &signature) {
        return Err(false);
    }
    let claims: Map<String, Value> = crypto::b64url_decode(payload)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(true)?;
    let exp = claims.get("exp").and_then(Value::as_i64).ok_or(false)?;
    if claims.get("iss").and_then(Value::as_str) != Some(issuer)
        || claims.get("aud").and_then(Value::as_str) != Some(issuer)
        || exp <= unix_secs()
    {
        return Err(false);
    }
    Ok(claims)
}

pub(crate) fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4))
        .unwrap_or(0)
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4))
        .unwrap_or(0)
}
