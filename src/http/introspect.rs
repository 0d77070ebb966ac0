//! `POST /oauth/introspect`: token introspection (RFC 7662) for downstream APIs.
//!
//! Why a module of its own: it is the one endpoint called by servers, not by
//! the browser — no cookies, no CSRF header, HTTP Basic client
//! authentication (RFC 6749 §2.3.1) with a token profile's name and its
//! introspection secret. The steps are `avemint_core::introspection`'s; this module
//! parses the request and shapes the answer.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::{Form, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::{Value, json};

use super::errors::ErrorBody;
use super::{ApiTags, AppState};
use avemint_core::introspection::{self, Answer, ClientError};
use avemint_core::session::StoreError;
use avemint_core::traffic::client_ip::ClientIp;
use avemint_core::traffic::rate_limit::CredentialVerdict;

/// The introspection endpoint.
pub(crate) struct IntrospectApi;

/// The form body of an introspection request (`application/x-www-form-urlencoded`).
#[derive(Debug, Object, serde::Deserialize)]
pub(crate) struct IntrospectRequest {
    /// The app JWT to check. Required (400 `invalid_request` without it).
    pub token: Option<String>,
    /// Optional; only `access_token` is known, and any value is ignored as RFC 7662 §2.1 allows.
    pub token_type_hint: Option<String>,
}

/// Answers of `POST /oauth/introspect`.
#[derive(ApiResponse)]
pub(crate) enum IntrospectResponse {
    /// `{"active": false}` when the token is not avemint's, has expired, belongs to another profile, or its session
    /// has ended; otherwise `{"active": true, "token_type": "Bearer", ...}` with every claim of the token (`iss`,
    /// `sub`, `aud`, `exp`, `iat`, `jti`, `sid`, `client_id` and the profile's own claims).
    #[oai(status = 200)]
    Ok(Json<Value>),
    /// No `token` in the form (`invalid_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing or wrong client credentials, or a profile without introspection (`invalid_client`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// Wrong credentials again after the client's network (IPv4 /24, IPv6 /64 and /48) had 20 wrong ones within a
    /// minute (`rate_limited`, with `Retry-After`): until they age out. Right credentials are never limited.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
    /// The body is not `application/x-www-form-urlencoded` (`invalid_request`). Answered by the framework before
    /// the handler runs (`errors::catch_all`); listed so the document names every answer.
    #[oai(status = 415)]
    #[allow(dead_code)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// The session store is unreachable right now (`temporarily_unavailable`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
}

fn error(code: &str, description: &str) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: code.to_owned(),
        error_description: description.to_owned(),
    })
}

/// The answer to wrong (or missing) client credentials from `client`: 401, or 429 once its network is past the
/// limit (`CredentialLimiter`).
async fn invalid_client(state: &AppState, client: &ClientIp) -> IntrospectResponse {
    match state.introspect_limiter.failed(client.0).await {
        CredentialVerdict::Rejected => IntrospectResponse::Unauthorized(
            error(
                "invalid_client",
                "authenticate with HTTP Basic: a token profile's name and its introspection secret",
            ),
            "Basic realm=\"avemint\", charset=\"UTF-8\"".to_owned(),
        ),
        CredentialVerdict::Limited(retry_after) => {
            let secs = retry_after.as_secs();
            IntrospectResponse::TooManyRequests(
                Json(ErrorBody {
                    error: "rate_limited".to_owned(),
                    error_description: format!("too many wrong credentials from this network; try again in {secs} s"),
                }),
                secs.to_string(),
            )
        }
    }
}

/// Why an `Authorization` header is not usable Basic credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BasicError {
    #[error("the scheme is not Basic")]
    Scheme,
    #[error("the credentials are not base64 of UTF-8 `id:secret`")]
    Encoding,
}

/// Parses `Authorization: Basic …` as RFC 6749 §2.3.1 says: base64 of `id:secret`, each form-urlencoded.
pub(crate) fn parse_basic(header: &str) -> Result<(String, String), BasicError> {
    let (scheme, rest) = header.trim().split_once(' ').ok_or(BasicError::Scheme)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(BasicError::Scheme);
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| BasicError::Encoding)?;
    let decoded = zeroize::Zeroizing::new(String::from_utf8(decoded).map_err(|_| BasicError::Encoding)?);
    let (id, secret) = decoded.split_once(':').ok_or(BasicError::Encoding)?;
    Ok((form_decode(id)?, form_decode(secret)?))
}

/// One `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte, the result UTF-8.
fn form_decode(raw: &str) -> Result<String, BasicError> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| BasicError::Encoding)
}

#[OpenApi(tag = "ApiTags::Auth")]
impl IntrospectApi {
    /// Token introspection (RFC 7662) for downstream APIs: is this app JWT avemint's, unexpired, and is its session
    /// still live? Authenticate with HTTP Basic: a token profile's name as client id and that profile's
    /// `[profiles.introspection]` secret, each form-urlencoded (RFC 6749 §2.3.1). A profile sees only its own
    /// tokens: any other token is `{"active": false}`. Never calls Ave; a session ended on another instance is seen
    /// within `AVEMINT_SESSION_CACHE_TTL_MS`. Answers carry `Cache-Control: no-store`.
    #[oai(path = "/oauth/introspect", method = "post")]
    async fn introspect(
        &self,
        state: Data<&Arc<AppState>>,
        client: Data<&ClientIp>,
        /// `Basic base64(urlencode(profile) ":" urlencode(secret))`.
        #[oai(name = "Authorization")]
        authorization: Header<Option<String>>,
        body: Form<IntrospectRequest>,
    ) -> IntrospectResponse {
        let Some(Ok((client_id, secret))) = authorization.0.as_deref().map(parse_basic) else {
            return invalid_client(&state, &client).await;
        };
        let secret = zeroize::Zeroizing::new(secret);
        let audience = match introspection::authenticate(&state.minter, &client_id, &secret) {
            Ok(audience) => audience,
            Err(e) => {
                // The profile name is configuration, not a secret; the secret is never logged.
                let reason = match e {
                    ClientError::UnknownProfile => "unknown profile",
                    ClientError::NotEnabled => "profile without introspection",
                    ClientError::WrongSecret => "wrong secret",
                };
                tracing::info!(profile = client_id.as_str(), reason, "introspection caller refused");
                return invalid_client(&state, &client).await;
            }
        };
        let Some(token) = body.0.token.filter(|t| !t.is_empty()) else {
            return IntrospectResponse::BadRequest(error("invalid_request", "the form needs a `token`"));
        };
        let token = zeroize::Zeroizing::new(token);
        match introspection::introspect(
            &state.minter,
            &state.sessions,
            state.public_url.as_str(),
            &audience,
            &token,
        )
        .await
        {
            Ok(Answer::Active(claims)) => {
                let mut answer = serde_json::Map::with_capacity(claims.len() + 2);
                answer.insert("active".into(), Value::Bool(true));
                answer.insert("token_type".into(), Value::from("Bearer"));
                for (name, value) in claims {
                    if name != "active" && name != "token_type" {
                        answer.insert(name, value);
                    }
                }
                IntrospectResponse::Ok(Json(Value::Object(answer)))
            }
            Ok(Answer::Inactive(why)) => {
                tracing::debug!(profile = client_id.as_str(), reason = ?why, "introspected token is inactive");
                IntrospectResponse::Ok(Json(json!({"active": false})))
            }
            Err(e @ StoreError::KeyNotHeld(_)) => {
                e.log("introspection");
                IntrospectResponse::Unavailable(error("temporarily_unavailable", e.public_reason()), "5".to_owned())
            }
            Err(e) => {
                tracing::warn!(error = %e, "introspection could not read the session store");
                IntrospectResponse::Unavailable(
                    error("temporarily_unavailable", "the session store is unreachable; try again"),
                    "1".to_owned(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> String {
        format!("Basic {}", STANDARD.encode(raw))
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_inside_base64() {
        assert_eq!(
            parse_basic(&basic("orders:s3cret")),
            Ok(("orders".into(), "s3cret".into()))
        );
        assert_eq!(
            parse_basic(&basic("my+api:a%3Ab%2Bc+d%25")),
            Ok(("my api".into(), "a:b+c d%".into()))
        );
        // Only the first `:` separates; the scheme is case-insensitive.
        assert_eq!(
            parse_basic(&format!("basic {}", STANDARD.encode("a:b:c"))),
            Ok(("a".into(), "b:c".into()))
        );
        assert_eq!(parse_basic(&basic("a:")), Ok(("a".into(), String::new())));
        assert_eq!(parse_basic("Bearer abc"), Err(BasicError::Scheme));
        assert_eq!(parse_basic("Basic"), Err(BasicError::Scheme));
        assert_eq!(parse_basic("Basic !!!"), Err(BasicError::Encoding));
        assert_eq!(parse_basic(&basic("no-colon")), Err(BasicError::Encoding));
        assert_eq!(parse_basic(&basic("a:%ff")), Err(BasicError::Encoding));
        assert_eq!(
            parse_basic(&format!("Basic {}", STANDARD.encode([0xff, b':', b'x']))),
            Err(BasicError::Encoding)
        );
    }

    proptest::proptest! {
        /// Whatever a client id and secret are, encoding them as RFC 6749 says and parsing gives them back.
        #[test]
        fn encoded_credentials_round_trip(id in "\\PC{0,20}", secret in "\\PC{0,40}") {
            let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let header = basic(&format!("{}:{}", enc(&id), enc(&secret)));
            proptest::prop_assert_eq!(parse_basic(&header), Ok((id, secret)));
        }

        /// Arbitrary headers never panic.
        #[test]
        fn any_header_is_parsed_or_refused(raw in "\\PC{0,80}") {
            let _ = parse_basic(&raw);
        }
    }
}
