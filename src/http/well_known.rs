//! `/.well-known/*`: what downstream APIs need to verify app JWTs.
//!
//! The JWKS is cacheable for exactly the rotation lead time (a next key is
//! published that long before it signs), carries a strong `ETag` that changes
//! with the key set, and answers `If-None-Match` with 304.

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::prepared_json::PreparedJson;
use super::{ApiTags, AppState};
use avemint_base::route::Route;
use avemint_core::mint::keys::JWKS_CACHE_LIFETIME;

/// The well-known endpoints.
pub(crate) struct WellKnownApi;

/// How long verifiers may cache the JWKS and discovery documents: the rotation lead time.
pub(crate) fn cache_control() -> String {
    format!("public, max-age={}", JWKS_CACHE_LIFETIME.as_secs())
}

/// True when an `If-None-Match` value (a list of entity tags, or `*`) matches `etag`.
/// Comparison is weak, as RFC 9110 requires for `If-None-Match`.
pub(crate) fn none_match(header: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    header.split(',').any(|t| t.trim() == "*" || opaque(t) == opaque(etag))
}

/// One public key (RFC 7517). Never carries a private member.
#[derive(Object)]
pub(crate) struct PublicJwk {
    /// Key type, e.g. `EC`.
    pub kty: String,
    /// Curve, for EC and OKP keys.
    #[oai(skip_serializing_if_is_none)]
    pub crv: Option<String>,
    /// Public x coordinate (EC, OKP).
    #[oai(skip_serializing_if_is_none)]
    pub x: Option<String>,
    /// Public y coordinate (EC).
    #[oai(skip_serializing_if_is_none)]
    pub y: Option<String>,
    /// RSA modulus.
    #[oai(skip_serializing_if_is_none)]
    pub n: Option<String>,
    /// RSA exponent.
    #[oai(skip_serializing_if_is_none)]
    pub e: Option<String>,
    /// The JWS algorithm this key signs with.
    pub alg: String,
    /// Always `sig`.
    #[oai(rename = "use")]
    pub use_: String,
    /// The key id (RFC 7638 thumbprint); app JWTs name it in their header.
    pub kid: String,
}

/// A JWK set.
#[derive(Object)]
pub(crate) struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

/// Discovery metadata for verifiers of app JWTs.
#[derive(Object)]
pub(crate) struct Discovery {
    /// The `iss` of every app JWT (the public URL).
    pub issuer: String,
    /// Where the signing keys are published.
    pub jwks_uri: String,
    /// avemint's own member: the JWS algorithms of the app JWTs' keys (every key in the JWKS: next, current and
    /// retired). avemint issues no id_token, so the OpenID member `id_token_signing_alg_values_supported` is not
    /// sent.
    pub app_jwt_signing_alg_values_supported: Vec<String>,
    /// Always `["public"]`.
    pub subject_types_supported: Vec<String>,
    /// Always `["code"]` (avemint signs users in with the code flow).
    pub response_types_supported: Vec<String>,
    /// Token introspection (RFC 7662) for app JWTs: `POST`, HTTP Basic with a token profile's name and secret.
    pub introspection_endpoint: String,
    /// Always `["client_secret_basic"]`.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// The token service (`POST`): client credentials for service profiles, token exchange (RFC 8693).
    pub token_endpoint: String,
    /// `["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"]`.
    pub grant_types_supported: Vec<String>,
    /// `["client_secret_basic", "client_secret_post", "none"]` (`none`: exchanging an Ave access token).
    pub token_endpoint_auth_methods_supported: Vec<String>,
}

/// JWKS response.
#[derive(ApiResponse)]
pub(crate) enum JwksResponse {
    /// The public keys.
    #[oai(status = 200)]
    Ok(
        PreparedJson<JwkSet>,
        #[oai(header = "Cache-Control")] String,
        #[oai(header = "ETag")] String,
    ),
    /// The verifier's cached copy (named by `If-None-Match`) is still current.
    #[oai(status = 304)]
    NotModified(#[oai(header = "Cache-Control")] String, #[oai(header = "ETag")] String),
}

/// Discovery response.
#[derive(ApiResponse)]
pub(crate) enum DiscoveryResponse {
    /// The metadata.
    #[oai(status = 200)]
    Ok(Json<Discovery>, #[oai(header = "Cache-Control")] String),
}

#[OpenApi(prefix_path = "/.well-known", tag = "ApiTags::WellKnown")]
impl WellKnownApi {
    /// avemint's public signing keys (JWKS, RFC 7517).
    #[oai(path = "/jwks.json", method = "get")]
    async fn jwks(
        &self,
        state: Data<&Arc<AppState>>,
        /// The `ETag` of a cached copy; answered with 304 if the key set has not changed.
        #[oai(name = "If-None-Match")]
        if_none_match: Header<Option<String>>,
    ) -> JwksResponse {
        let ring = state.minter.keys().current();
        let etag = ring.etag().to_owned();
        if if_none_match.0.as_deref().is_some_and(|h| none_match(h, &etag)) {
            return JwksResponse::NotModified(cache_control(), etag);
        }
        // Rendered once per key set from the keys' public members only (`KeyRing::load`).
        JwksResponse::Ok(
            PreparedJson::from_bytes(ring.jwks_json().clone()),
            cache_control(),
            etag,
        )
    }

    /// OpenID-style discovery metadata for verifiers of app JWTs.
    #[oai(path = "/openid-configuration", method = "get")]
    async fn openid_configuration(&self, state: Data<&Arc<AppState>>) -> DiscoveryResponse {
        let issuer = state.public_url.as_str().to_owned();
        DiscoveryResponse::Ok(
            Json(Discovery {
                jwks_uri: format!("{issuer}{}", Route::Jwks.path()),
                introspection_endpoint: format!("{issuer}{}", Route::Introspect.path()),
                introspection_endpoint_auth_methods_supported: vec!["client_secret_basic".into()],
                token_endpoint: format!("{issuer}{}", Route::OAuthToken.path()),
                grant_types_supported: vec![
                    avemint_core::token_service::CLIENT_CREDENTIALS.into(),
                    avemint_core::token_service::TOKEN_EXCHANGE.into(),
                ],
                token_endpoint_auth_methods_supported: vec![
                    "client_secret_basic".into(),
                    "client_secret_post".into(),
                    "none".into(),
                ],
                issuer,
                app_jwt_signing_alg_values_supported: state
                    .minter
                    .keys()
                    .current()
                    .algorithms()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                subject_types_supported: vec!["public".into()],
                response_types_supported: vec!["code".into()],
            }),
            cache_control(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::none_match;
    use avemint_core::mint::keys::KeyRing;

    #[test]
    fn the_served_jwks_has_only_documented_public_members() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ring = KeyRing::load_or_generate(dir.path()).expect("keys");
        let served: serde_json::Value = serde_json::from_slice(ring.jwks_json()).expect("JSON");
        assert_eq!(&served, ring.jwks());
        let keys = served["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 2, "current and next");
        for key in keys {
            for (name, value) in key.as_object().expect("object") {
                // The members of `PublicJwk`: nothing private (`d`, `p`, `q`, ...) can appear.
                assert!(
                    ["kty", "crv", "x", "y", "n", "e", "alg", "use", "kid"].contains(&name.as_str()),
                    "undocumented member {name}"
                );
                assert!(value.is_string(), "{name} is a string");
            }
            assert_eq!(key["use"], "sig");
        }
    }

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let etag = "\"abc\"";
        assert!(none_match("\"abc\"", etag));
        assert!(none_match("W/\"abc\"", etag));
        assert!(none_match("\"x\", \"abc\"", etag));
        assert!(none_match("*", etag));
        assert!(!none_match("\"abcd\"", etag));
        assert!(!none_match("abc", etag));
        assert!(!none_match("", etag));
    }
}
