//! `GET /demo/api/hello` (`avemint demo` only): a stand-in for the downstream API
//! behind an SPA, so the demo shows an app JWT being used, not just minted.
//!
//! It verifies the bearer token the way any downstream API should (see
//! `examples/downstream.rs`): ES256 only, key chosen by `kid` from avemint's
//! published JWKS (here read in-process, the very document served at
//! `/.well-known/jwks.json`), header `typ: at+jwt`, exact `iss`, `aud` (the demo's
//! audience: its public URL) and `exp`. It answers `{"hello": <name or sub>}`.

use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::{StatusCode, header};
use poem::{Request, Response};
use serde_json::{Value, json};

use super::AppState;

/// The `typ` header of app JWTs.
const TOKEN_TYPE: &str = "at+jwt";

/// Why a request to the demo API was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoApiError {
    #[error("send the app JWT as `Authorization: Bearer <token>`")]
    MissingBearer,
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token header has no `kid`")]
    NoKid,
    #[error("the token header `typ` is not `at+jwt`")]
    WrongType,
    #[error("the token was not signed by a key in avemint's JWKS")]
    UnknownKey,
    #[error("the token failed verification: {0}")]
    Invalid(String),
}

/// Verifies `token` against the JWKS document `jwks` for `issuer` and `audience`.
pub(crate) fn verify(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Result<Value, DemoApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| DemoApiError::Malformed)?;
    if header.typ.as_deref() != Some(TOKEN_TYPE) {
        return Err(DemoApiError::WrongType);
    }
    let kid = header.kid.ok_or(DemoApiError::NoKid)?;
    let set: JwkSet = serde_json::from_value(jwks.clone()).map_err(|_| DemoApiError::UnknownKey)?;
    let jwk = set.find(&kid).ok_or(DemoApiError::UnknownKey)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| DemoApiError::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| DemoApiError::Invalid(describe(&e)))
}

/// The error kind only: never the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::InvalidAlgorithm => "algorithm not allowed".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim `{c}`"),
        ErrorKind::ImmatureSignature => "not valid yet".into(),
        _ => "malformed".into(),
    }
}

fn bearer(req: &Request) -> Result<&str, DemoApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(DemoApiError::MissingBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(DemoApiError::MissingBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(DemoApiError::MissingBearer);
    }
    Ok(token.trim())
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body.to_string())
}

/// Answers a request to the demo API.
pub(crate) fn hello(req: &Request) -> Response {
    let Some(state) = req.data::<Arc<AppState>>() else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"error": "temporarily_unavailable", "error_description": "the demo API is not wired"}),
        );
    };
    let url = state.public_url.as_str();
    let keys = state.minter.keys().current();
    match bearer(req).and_then(|token| verify(token, keys.jwks(), url, url)) {
        Ok(claims) => {
            let who = claims
                .get("name")
                .and_then(Value::as_str)
                .or_else(|| claims.get("sub").and_then(Value::as_str))
                .unwrap_or_default();
            json_response(StatusCode::OK, &json!({ "hello": who, "sub": claims.get("sub") }))
        }
        Err(e) => {
            let mut resp = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({"error": "invalid_token", "error_description": e.to_string()}),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                poem::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use avemint_core::mint::keys::KeyRing;
    use serde_json::json;

    const URL: &str = "http://127.0.0.1:8080";

    fn new_ring() -> (tempfile::TempDir, KeyRing) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_generate(&dir.path().join("keys")).expect("keys");
        (dir, ring)
    }

    fn token(ring: &KeyRing, claims: &Value) -> String {
        ring.signing_key()
            .sign(&serde_json::to_vec(claims).expect("json"))
            .expect("sign")
    }

    fn claims(exp_offset: i64) -> Value {
        let now = avemint_base::clock::Clock::System.now().as_secs();
        json!({"iss": URL, "aud": URL, "sub": "user-1", "name": "Ada", "iat": now, "exp": now + exp_offset})
    }

    #[test]
    fn accepts_a_token_signed_by_the_published_key() {
        let (_dir, ring) = new_ring();
        let got = verify(&token(&ring, &claims(60)), ring.jwks(), URL, URL).expect("valid");
        assert_eq!(got["sub"], "user-1");
    }

    #[test]
    fn refuses_wrong_audience_issuer_expiry_and_foreign_keys() {
        let (_dir, ring) = new_ring();
        let good = token(&ring, &claims(60));
        assert!(matches!(
            verify(&good, ring.jwks(), URL, "https://other.example"),
            Err(DemoApiError::Invalid(_))
        ));
        assert!(matches!(
            verify(&good, ring.jwks(), "https://other.example", URL),
            Err(DemoApiError::Invalid(_))
        ));
        let expired = token(&ring, &claims(-600));
        assert!(matches!(verify(&expired, ring.jwks(), URL, URL), Err(DemoApiError::Invalid(ref d)) if d == "expired"));
        let (_other_dir, other) = new_ring();
        assert!(matches!(
            verify(&token(&other, &claims(60)), ring.jwks(), URL, URL),
            Err(DemoApiError::UnknownKey)
        ));
        assert!(matches!(
            verify("a.b.c", ring.jwks(), URL, URL),
            Err(DemoApiError::Malformed)
        ));
        let unsigned = format!(
            "{}.{}.",
            base64_url(r#"{"alg":"none","typ":"at+jwt"}"#),
            base64_url(&claims(60).to_string())
        );
        assert!(verify(&unsigned, ring.jwks(), URL, URL).is_err());
        let plain_jwt = format!(
            "{}.{}.sig",
            base64_url(r#"{"alg":"ES256","typ":"JWT","kid":"k"}"#),
            base64_url(&claims(60).to_string())
        );
        assert!(matches!(
            verify(&plain_jwt, ring.jwks(), URL, URL),
            Err(DemoApiError::WrongType)
        ));
    }

    fn base64_url(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn reads_only_bearer_authorization() {
        let req = |v: &str| Request::builder().header(header::AUTHORIZATION, v).finish();
        assert_eq!(bearer(&req("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer(&req("bearer abc")).ok(), Some("abc"));
        assert!(bearer(&req("Basic abc")).is_err());
        assert!(bearer(&req("Bearer ")).is_err());
        assert!(bearer(&Request::builder().finish()).is_err());
    }
}
