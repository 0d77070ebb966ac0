//! `GET /api/oauth/userinfo` (§1.3).

use std::sync::Arc;
use std::time::Instant;

use poem::http::{StatusCode, header};
use poem::{Request, Response};
use serde::Serialize;
use serde_json::Value;

use super::respond::{error_only, json, with_cors};
use super::{Shared, crypto};
use super::{jwt::verify_access_jwt, scopes::has_scope};

/// Userinfo body, keys in Ave's order with `iss` last. `None` = omitted,
/// `Some(None)` = `null`.
#[derive(Serialize)]
struct UserInfo<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    picture: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    iss: &'a str,
}

pub(super) fn handle(shared: &Shared, req: &Request) -> Response {
    with_cors(answer(shared, req))
}

fn answer(shared: &Shared, req: &Request) -> Response {
    let Some(token) = req
        .header(header::AUTHORIZATION)
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return error_only(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    let invalid = || error_only(StatusCode::UNAUTHORIZED, "invalid_token");

    let (identity_id, scope) = if token.split('.').count() == 3 {
        let key = Arc::clone(&shared.lock().signing_key);
        match verify_access_jwt(&key, &shared.issuer, token) {
            Ok(claims) => {
                let sub = claims.get("sub").and_then(Value::as_str);
                let scope = claims.get("scope").and_then(Value::as_str);
                match (sub, scope) {
                    (Some(sub), Some(scope)) => (sub.to_owned(), scope.to_owned()),
                    _ => return invalid(),
                }
            }
            Err(true) => return error_only(StatusCode::BAD_REQUEST, "Invalid JSON body"),
            Err(false) => return invalid(),
        }
    } else {
        let state = shared.lock();
        match state.access_tokens.get(&crypto::sha256_hex(token)) {
            Some(record) if record.expires_at > Instant::now() => (record.user_id.clone(), record.scope.clone()),
            _ => return invalid(),
        }
    };
    let Some(user) = shared.user(&identity_id) else {
        return invalid();
    };
    let profile = has_scope(&scope, "profile");
    let body = UserInfo {
        sub: &user.id,
        name: profile.then_some(user.display_name.as_str()),
        preferred_username: profile.then_some(user.handle.as_str()),
        picture: profile.then_some(user.avatar_url.as_deref()),
        email: has_scope(&scope, "email").then_some(user.email.as_deref()),
        user_id: has_scope(&scope, "user_id").then(|| crypto::account_id_for(&user.id)),
        iss: &shared.issuer,
    };
    json(StatusCode::OK, &body)
}
