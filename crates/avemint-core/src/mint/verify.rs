//! Verifying avemint's own app JWTs, for token introspection (RFC 7662).
//!
//! Why here: the minter signs with the key ring, so the key ring is what
//! decides whether a token is avemint's. A token verifies when its header
//! names (`kid`) a published key (current, next or retired), its `alg` is that
//! key's algorithm (pinned: never taken from the token, so `none` or an HMAC
//! algorithm is refused), `typ` is `at+jwt`, the signature holds, `iss` is
//! avemint's and `exp` (and `nbf`, if present) hold by avemint's clock. The
//! audience is left to the caller, which maps it to a token profile.

use serde_json::{Map, Value};

use super::keys::KeyRing;
use avemint_base::clock::UnixTime;

/// The `typ` header of app JWTs.
const TOKEN_TYPE: &str = "at+jwt";

/// Why a token is not a valid app JWT of this avemint. Never carries the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a JWT avemint signs (header unreadable, wrong `typ` or unknown algorithm)")]
    Malformed,
    #[error("no published key has this `kid`")]
    UnknownKey,
    #[error("the signature or a required claim failed verification")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

/// Checks `token` against the key ring and `issuer` at `now`; returns its claims.
pub(crate) fn verify(
    ring: &KeyRing,
    token: &str,
    issuer: &str,
    now: UnixTime,
) -> Result<Map<String, Value>, VerifyError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
    if header.typ.as_deref() != Some(TOKEN_TYPE) {
        return Err(VerifyError::Malformed);
    }
    let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
    let key = ring
        .keys()
        .iter()
        .map(|k| &k.key)
        .find(|k| k.kid() == kid)
        .ok_or(VerifyError::UnknownKey)?;
    let decoding = key.decoding_key().ok_or(VerifyError::UnknownKey)?;
    let alg: jsonwebtoken::Algorithm = key.alg().jws().parse().map_err(|_| VerifyError::Malformed)?;
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // Time is checked below by avemint's clock (the one that set `iat`/`exp`); the audience by the caller.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Map<String, Value>>(token, decoding, &validation)
        .map_err(|_| VerifyError::Invalid)?
        .claims;
    let now = now.as_secs();
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => {}
        Some(_) => return Err(VerifyError::Expired),
        None => return Err(VerifyError::Invalid),
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_i64() {
            Some(nbf) if nbf <= now => {}
            Some(_) => return Err(VerifyError::NotYetValid),
            None => return Err(VerifyError::Invalid),
        },
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    fn sign(ring: &KeyRing, claims: &Value) -> String {
        ring.signing_key().sign(claims.to_string().as_bytes()).expect("sign")
    }

    #[test]
    fn avemint_tokens_verify_and_everything_else_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_generate(dir.path()).expect("keys");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = KeyRing::load_or_generate(other_dir.path()).expect("keys");
        let now = UnixTime::from_secs(1_000_000);
        let claims = json!({"iss": "https://a", "sub": "u", "aud": "x", "iat": 999_990, "exp": 1_000_100});
        let good = sign(&ring, &claims);
        assert_eq!(verify(&ring, &good, "https://a", now).expect("valid")["sub"], "u");
        assert_eq!(verify(&ring, &good, "https://b", now), Err(VerifyError::Invalid));
        assert_eq!(
            verify(&ring, &good, "https://a", UnixTime::from_secs(1_000_100)),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify(&ring, &sign(&other, &claims), "https://a", now),
            Err(VerifyError::UnknownKey)
        );
        let later = json!({"iss": "https://a", "sub": "u", "aud": "x", "exp": 1_000_100, "nbf": 1_000_050});
        assert_eq!(
            verify(&ring, &sign(&ring, &later), "https://a", now),
            Err(VerifyError::NotYetValid)
        );
        // `alg: none` with our kid, and a swapped payload, are refused.
        let kid = ring.signing_key().kid().to_owned();
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            enc(&json!({"alg": "none", "typ": "at+jwt", "kid": kid})),
            enc(&claims)
        );
        assert!(verify(&ring, &none, "https://a", now).is_err());
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            enc(&json!({"iss": "https://a", "sub": "admin", "aud": "x", "exp": 1_000_100})),
            parts[2]
        );
        assert_eq!(verify(&ring, &forged, "https://a", now), Err(VerifyError::Invalid));
        for garbage in ["", "a.b.c", "not a token", "...."] {
            assert!(verify(&ring, garbage, "https://a", now).is_err(), "{garbage}");
        }
    }
}
