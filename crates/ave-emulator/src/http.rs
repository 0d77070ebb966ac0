//! Routing and the two `.well-known` documents. The router imports the handlers; the handlers never import
//! it (their response helpers are in `respond`).

use std::sync::Arc;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Endpoint, Request, Response};
use serde::Serialize;

use super::crypto::Jwk;
use super::respond::{error_only, json, not_found, with_cors};
use super::{Shared, signin, token, userinfo};

/// The poem endpoint serving every route of the emulator.
pub(super) fn endpoint(shared: Arc<Shared>) -> impl Endpoint<Output = Response> {
    poem::endpoint::make(move |req: Request| {
        let shared = Arc::clone(&shared);
        async move { dispatch(shared, req).await }
    })
}

async fn dispatch(shared: Arc<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let mut response = match (method, path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration") => discovery(&shared),
        (Method::GET, "/.well-known/jwks.json") => jwks(&shared),
        (Method::GET, "/signin") => signin::page(&shared, &req),
        (Method::POST, "/signin/decide") => signin::decide(&shared, req).await,
        (Method::POST, "/api/oauth/token") => token::handle(&shared, req).await,
        (Method::GET, "/api/oauth/userinfo") => userinfo::handle(&shared, &req),
        (Method::OPTIONS, "/api/oauth/token" | "/api/oauth/userinfo") => preflight(),
        _ => not_found(),
    };
    let headers = response.headers_mut();
    if path.starts_with("/api/") && !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn preflight() -> Response {
    with_cors(
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS")
            .header(header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type, Authorization")
            .finish(),
    )
}

/// The discovery document, keys in Ave's order (§1.5).
#[derive(Serialize)]
struct Discovery<'a> {
    issuer: &'a str,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    jwks_uri: String,
    scopes_supported: [&'static str; 5],
    response_types_supported: [&'static str; 1],
    grant_types_supported: [&'static str; 3],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: [&'static str; 1],
    token_endpoint_auth_methods_supported: [&'static str; 2],
}

/// The status of [`super::Emulator::set_metadata_failure`], as Ave's generic error answer.
fn metadata_failure(shared: &Shared) -> Option<Response> {
    let status = shared.lock().metadata_failure?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(error_only(status, "Internal Server Error"))
}

fn discovery(shared: &Shared) -> Response {
    if let Some(failure) = metadata_failure(shared) {
        return failure;
    }
    let advertised = shared.lock().advertised_base_url.clone();
    let base = advertised.as_ref().unwrap_or(&shared.base_url);
    let doc = Discovery {
        issuer: &shared.issuer,
        authorization_endpoint: format!("{}/signin", shared.issuer),
        token_endpoint: format!("{base}/api/oauth/token"),
        userinfo_endpoint: format!("{base}/api/oauth/userinfo"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        scopes_supported: ["openid", "profile", "email", "offline_access", "user_id"],
        response_types_supported: ["code"],
        grant_types_supported: [
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: ["RS256"],
        token_endpoint_auth_methods_supported: ["client_secret_post", "none"],
    };
    let mut response = with_cors(json(StatusCode::OK, &doc));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600, stale-while-revalidate=21600"),
    );
    response
}

#[derive(Serialize)]
struct Jwks<'a> {
    keys: [Jwk<'a>; 1],
}

fn jwks(shared: &Shared) -> Response {
    if let Some(failure) = metadata_failure(shared) {
        return failure;
    }
    let key = {
        let mut state = shared.lock();
        state.jwks_fetches += 1;
        Arc::clone(&state.signing_key)
    };
    let mut response = with_cors(json(StatusCode::OK, &Jwks { keys: [key.jwk()] }));
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300, stale-while-revalidate=1800"),
    );
    headers.insert("CDN-Cache-Control", HeaderValue::from_static("public, s-maxage=300"));
    response
}
