//! Validation of Ave's id_tokens (OpenID Connect Core §3.1.3.7, RFC 8725).
//!
//! The algorithm list is pinned to RS256, the only one Ave uses: `none`,
//! HMAC (including HMAC keyed with the public key) and every other algorithm
//! are refused before a key is touched. Headers that point at keys elsewhere
//! (`jku`, `x5u`, `jwk`, `x5c`) or carry `crit` are refused without any fetch.
//! An unknown `kid`, or a known one whose key does not verify the signature (a
//! key replaced under the same name), makes one re-fetch of Ave's JWKS (rate
//! limited) before the token is refused.
//! Only a `ValidatedIdToken` leaves this module, so the rest of avemint cannot
//! use claims that were not checked.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::client::AveClient;
use super::wire::{AveError, KeySet};
use avemint_base::clock::UnixTime;
use avemint_base::secret::Credential;

/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 30;
/// Longest id_token accepted, in bytes.
pub(crate) const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// An id_token whose signature and claims were checked.
#[derive(Debug, Clone)]
pub struct ValidatedIdToken {
    sub: String,
    claims: Map<String, Value>,
}

impl ValidatedIdToken {
    /// Ave's subject (the identity UUID).
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// All claims of the token.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    /// Consumes the token, keeping the claims that describe the user (the
    /// protocol claims `nonce`, `aud`, `azp`, `iat`, `exp`, … are dropped).
    pub(crate) fn into_profile_claims(self) -> Map<String, Value> {
        profile_claims(self.claims)
    }
}

/// The claims of an id_token that describe the user: all but the protocol claims (`nonce`, `aud`, `azp`, `iat`,
/// `exp`, …). What a session keeps as `id_token_claims` (and what its stored record derives them from).
pub(crate) fn profile_claims(mut claims: Map<String, Value>) -> Map<String, Value> {
    for c in [
        "nonce",
        "aud",
        "azp",
        "iat",
        "exp",
        "nbf",
        "auth_time",
        "at_hash",
        "c_hash",
    ] {
        claims.remove(c);
    }
    claims
}

/// What the caller expects of this particular token.
#[derive(Debug, Clone, Copy)]
pub enum NonceCheck<'a> {
    /// Code grant: the `nonce` claim must equal this value.
    Expect(&'a str),
    /// Refresh grant: Ave sends no nonce (OIDC Core §12.2).
    NotExpected,
}

/// Why an id_token was refused. Messages name the check, never token content.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("id_token is malformed")]
    Malformed,
    #[error("id_token uses a forbidden algorithm (only RS256 is accepted)")]
    ForbiddenAlgorithm,
    #[error("id_token header carries `{0}`, which is not accepted")]
    ForbiddenHeader(String),
    #[error("id_token is signed with a key Ave does not publish")]
    UnknownKey,
    #[error("id_token signature is invalid")]
    BadSignature,
    #[error("id_token issuer is wrong")]
    Issuer,
    #[error("id_token audience is wrong")]
    Audience,
    #[error("id_token authorized party (azp) is missing or wrong")]
    AuthorizedParty,
    #[error("id_token has expired")]
    Expired,
    #[error("id_token was issued in the future")]
    IssuedInFuture,
    #[error("id_token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("id_token nonce does not match this sign-in")]
    Nonce,
    #[error("Ave's signing keys could not be loaded: {0}")]
    Keys(#[from] AveError),
}

const FORBIDDEN_HEADERS: &[&str] = &["jku", "x5u", "jwk", "x5c", "crit"];

/// Validates `token` against Ave's JWKS and the expectations.
pub async fn validate(
    client: &AveClient,
    token: &str,
    nonce: NonceCheck<'_>,
    now: UnixTime,
) -> Result<ValidatedIdToken, IdTokenError> {
    let kid = inspect_header(token)?;
    let mut keys = client.key_set().await?;
    let mut refetched = false;
    if keys.find(kid.as_deref()).is_none() {
        // Ave may have rotated: one re-fetch, rate limited, then give up.
        keys = client.refetch_key_set().await?.ok_or(IdTokenError::UnknownKey)?;
        refetched = true;
    }
    let check =
        |keys: &KeySet| validate_with_keys(keys, client.issuer().as_str(), client.client_id(), token, nonce, now);
    match check(&keys) {
        // Ave may have replaced the key under the same `kid`: one re-fetch (rate limited together with the unknown
        // kids'), then the answer stands. A re-fetch that fails or is held back leaves the signature refused.
        Err(IdTokenError::BadSignature) if !refetched => match client.refetch_key_set().await {
            Ok(Some(fresh)) => check(&fresh),
            _ => Err(IdTokenError::BadSignature),
        },
        checked => checked,
    }
}

/// The whole validation against a key set already in memory: no network, no
/// state. `validate` uses it after loading the keys; fuzzing calls it directly.
pub fn validate_with_keys(
    keys: &KeySet,
    issuer: &str,
    client_id: &str,
    token: &str,
    nonce: NonceCheck<'_>,
    now: UnixTime,
) -> Result<ValidatedIdToken, IdTokenError> {
    let kid = inspect_header(token)?;
    let key = keys.find(kid.as_deref()).ok_or(IdTokenError::UnknownKey)?;

    let mut v = Validation::new(Algorithm::RS256);
    v.algorithms = vec![Algorithm::RS256];
    v.leeway = LEEWAY_SECS;
    // `exp` and `nbf` are checked in `check_claims` against the caller's `now`
    // (jsonwebtoken would read the system clock), so validation is a pure function.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| match e.into_kind() {
        ErrorKind::InvalidSignature => IdTokenError::BadSignature,
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => IdTokenError::Expired,
        ErrorKind::InvalidIssuer => IdTokenError::Issuer,
        ErrorKind::InvalidAudience => IdTokenError::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => IdTokenError::ForbiddenAlgorithm,
        ErrorKind::MissingRequiredClaim(c) => IdTokenError::MissingClaim(c),
        _ => IdTokenError::Malformed,
    })?;
    check_claims(data.claims, client_id, nonce, now)
}

/// Checks the header before any key is looked up; returns the `kid`.
pub(crate) fn inspect_header(token: &str) -> Result<Option<String>, IdTokenError> {
    if token.len() > MAX_ID_TOKEN_LEN || token.split('.').count() != 3 {
        return Err(IdTokenError::Malformed);
    }
    let header_b64 = token.split('.').next().ok_or(IdTokenError::Malformed)?;
    let header_bytes = URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| IdTokenError::Malformed)?;
    let header: Map<String, Value> = serde_json::from_slice(&header_bytes).map_err(|_| IdTokenError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(IdTokenError::ForbiddenAlgorithm);
    }
    if let Some(name) = FORBIDDEN_HEADERS.iter().find(|h| header.contains_key(**h)) {
        return Err(IdTokenError::ForbiddenHeader((*name).to_owned()));
    }
    match header.get("kid") {
        None => Ok(None),
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 256 => Ok(Some(k.clone())),
        Some(_) => Err(IdTokenError::Malformed),
    }
}

/// The checks jsonwebtoken does not make here: `exp`, `nbf`, `iat` (all against `now`), `sub`, `azp`, `nonce`.
fn check_claims(
    claims: Map<String, Value>,
    client_id: &str,
    nonce: NonceCheck<'_>,
    now: UnixTime,
) -> Result<ValidatedIdToken, IdTokenError> {
    // JWT numeric dates are unsigned seconds (RFC 7519 §2), compared as JSON numbers.
    let now = now.as_unsigned();
    // Numbers only: a string-typed `exp` (CVE-2026-25537's trick) is missing, not "valid forever".
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or_else(|| IdTokenError::MissingClaim("exp".into()))?;
    if exp < now.saturating_sub(LEEWAY_SECS) as f64 {
        return Err(IdTokenError::Expired);
    }
    match claims.get("nbf") {
        None => {}
        Some(nbf) => match nbf.as_f64() {
            Some(nbf) if nbf <= (now + LEEWAY_SECS) as f64 => {}
            Some(_) => return Err(IdTokenError::Expired),
            None => return Err(IdTokenError::Malformed),
        },
    }
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .ok_or_else(|| IdTokenError::MissingClaim("iat".into()))?;
    if iat > (now + LEEWAY_SECS) as f64 {
        return Err(IdTokenError::IssuedInFuture);
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(IdTokenError::MissingClaim("sub".into())),
    };
    let azp = claims.get("azp");
    match (claims.get("aud"), azp) {
        // Several audiences: the token must say it was issued to us.
        (Some(Value::Array(_)), None) => return Err(IdTokenError::AuthorizedParty),
        (_, Some(Value::String(a))) if a != client_id => return Err(IdTokenError::AuthorizedParty),
        (_, Some(v)) if !v.is_string() => return Err(IdTokenError::AuthorizedParty),
        _ => {}
    }
    if let NonceCheck::Expect(expected) = nonce {
        match claims.get("nonce") {
            Some(Value::String(n)) if Credential::new(expected).matches(n) => {}
            _ => return Err(IdTokenError::Nonce),
        }
    }
    Ok(ValidatedIdToken { sub, claims })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> UnixTime {
        UnixTime::from_unsigned(secs)
    }
    use serde_json::json;

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
    }

    fn token_with_header(h: Value) -> String {
        format!("{}.{}.sig", enc(&h), enc(&json!({})))
    }

    #[test]
    fn header_checks_refuse_before_any_key_lookup() {
        assert!(matches!(
            inspect_header(&token_with_header(json!({"alg":"none"}))),
            Err(IdTokenError::ForbiddenAlgorithm)
        ));
        assert!(matches!(
            inspect_header(&token_with_header(json!({"alg":"HS256"}))),
            Err(IdTokenError::ForbiddenAlgorithm)
        ));
        assert!(matches!(
            inspect_header(&token_with_header(json!({"typ":"JWT"}))),
            Err(IdTokenError::ForbiddenAlgorithm)
        ));
        for h in FORBIDDEN_HEADERS {
            let t = token_with_header(json!({"alg":"RS256", *h: "x"}));
            assert!(
                matches!(inspect_header(&t), Err(IdTokenError::ForbiddenHeader(_))),
                "{h}"
            );
        }
        assert_eq!(
            inspect_header(&token_with_header(json!({"alg":"RS256","kid":"k1"})))
                .expect("ok")
                .as_deref(),
            Some("k1")
        );
        assert!(matches!(inspect_header("a.b"), Err(IdTokenError::Malformed)));
        assert!(matches!(inspect_header("!!.b.c"), Err(IdTokenError::Malformed)));
    }

    #[test]
    fn id_tokens_over_16_kib_are_refused_before_anything_is_decoded() {
        let header = enc(&json!({"alg":"RS256","kid":"k1"}));
        let at_limit = |len: usize| format!("{header}.{}.sig", "A".repeat(len - header.len() - 5));
        let largest = at_limit(MAX_ID_TOKEN_LEN);
        assert_eq!(largest.len(), 16 * 1024);
        assert_eq!(inspect_header(&largest).expect("at the limit").as_deref(), Some("k1"));
        let over = at_limit(MAX_ID_TOKEN_LEN + 1);
        assert!(matches!(inspect_header(&over), Err(IdTokenError::Malformed)));
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("object"),
        }
    }

    #[test]
    fn claim_checks() {
        let ok = json!({"sub":"u1","aud":"c","iat":100,"exp":1000,"nonce":"n1","azp":"c"});
        assert!(check_claims(claims(ok.clone()), "c", NonceCheck::Expect("n1"), at(100)).is_ok());
        assert!(matches!(
            check_claims(claims(ok.clone()), "c", NonceCheck::Expect("n2"), at(100)),
            Err(IdTokenError::Nonce)
        ));
        assert!(check_claims(claims(ok.clone()), "c", NonceCheck::NotExpected, at(100)).is_ok());
        let mut no_nonce = claims(ok.clone());
        no_nonce.remove("nonce");
        assert!(matches!(
            check_claims(no_nonce, "c", NonceCheck::Expect("n1"), at(100)),
            Err(IdTokenError::Nonce)
        ));
        assert!(matches!(
            check_claims(claims(ok.clone()), "c", NonceCheck::Expect("n1"), at(10)),
            Err(IdTokenError::IssuedInFuture)
        ));
        let arr = json!({"sub":"u1","aud":["c","d"],"iat":100,"exp":1000});
        assert!(matches!(
            check_claims(claims(arr), "c", NonceCheck::NotExpected, at(100)),
            Err(IdTokenError::AuthorizedParty)
        ));
        let arr_azp = json!({"sub":"u1","aud":["c","d"],"iat":100,"exp":1000,"azp":"c"});
        assert!(check_claims(claims(arr_azp), "c", NonceCheck::NotExpected, at(100)).is_ok());
        let wrong_azp = json!({"sub":"u1","aud":"c","iat":100,"exp":1000,"azp":"d"});
        assert!(matches!(
            check_claims(claims(wrong_azp), "c", NonceCheck::NotExpected, at(100)),
            Err(IdTokenError::AuthorizedParty)
        ));
        let empty_sub = json!({"sub":"","aud":"c","iat":100,"exp":1000});
        let expired = json!({"sub":"u","aud":"c","iat":100,"exp":1000});
        assert!(
            check_claims(
                claims(expired.clone()),
                "c",
                NonceCheck::NotExpected,
                at(1000 + LEEWAY_SECS)
            )
            .is_ok()
        );
        assert!(matches!(
            check_claims(claims(expired), "c", NonceCheck::NotExpected, at(1001 + LEEWAY_SECS)),
            Err(IdTokenError::Expired)
        ));
        let string_exp = json!({"sub":"u","aud":"c","iat":100,"exp":"99999999999"});
        assert!(matches!(
            check_claims(claims(string_exp), "c", NonceCheck::NotExpected, at(100)),
            Err(IdTokenError::MissingClaim(_))
        ));
        let not_yet = json!({"sub":"u","aud":"c","iat":100,"exp":1000,"nbf":500});
        assert!(matches!(
            check_claims(claims(not_yet), "c", NonceCheck::NotExpected, at(100)),
            Err(IdTokenError::Expired)
        ));
        assert!(matches!(
            check_claims(claims(empty_sub), "c", NonceCheck::NotExpected, at(100)),
            Err(IdTokenError::MissingClaim(_))
        ));
    }
}
