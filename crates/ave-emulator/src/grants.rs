//! The authorization-code and refresh grants with Ave's checks in Ave's order:
//! the code deleted first, PKCE, refresh-token rotation on every use, family
//! revocation on reuse and the lost-race answer (`docs/ave-protocol.md` §3).

use std::time::{Duration, Instant};

use poem::Response;
use poem::http::StatusCode;
use serde::Serialize;

use crate::crypto;
use crate::jwt::{IdTokenNonce, mint_jwts};
use crate::reply::{GrantError, OAuthError};
use crate::request::{CodeGrant, RefreshGrant, RequestMeta};
use crate::respond::json;
use crate::scopes::{has_scope, is_scope_allowed, parse_scopes};

use crate::state::{AccessRecord, RefreshRecord, deadline};

use crate::{EmulatedUser, Shared};

// ---------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------

/// `^[A-Za-z0-9._~-]{43,128}$`.
pub(crate) fn is_valid_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Returns the secret unless it is absent or empty (Ave's `if (clientSecret)`).
pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

pub(crate) fn authorization_code(shared: &Shared, grant: CodeGrant) -> Result<Response, GrantError> {
    let now = Instant::now();
    // 1. Consume (delete) the code before anything else.
    let record = {
        let mut state = shared.lock();
        state.prune(now);
        state.codes.remove(&crypto::sha256_hex(&grant.code))
    };
    let record = record.ok_or_else(|| OAuthError::invalid_grant("Authorization code not found"))?;
    if record.expires_at <= now {
        return Err(OAuthError::invalid_grant("Authorization code expired").into());
    }
    // 2. Redirect URI (both sides WHATWG-normalised).
    if record.redirect_uri != grant.redirect_uri {
        return Err(OAuthError::invalid_grant("Redirect URI mismatch").into());
    }
    // 4. Client lookup, 5. code bound to this client.
    if grant.client_id != shared.config.client_id {
        return Err(OAuthError::invalid_client("Client not found").into());
    }
    if record.client_id != grant.client_id {
        return Err(OAuthError::invalid_grant("client_id does not match authorization").into());
    }
    // 6. Client authentication and PKCE.
    let secret = non_empty(grant.client_secret);
    if let Some(challenge) = &record.code_challenge {
        if let Some(secret) = &secret
            && !crypto::digests_equal(secret, &shared.client_secret())
        {
            return Err(OAuthError::invalid_client("Invalid client secret").into());
        }
        let verifier =
            non_empty(grant.code_verifier).ok_or_else(|| OAuthError::invalid_request("Code verifier required"))?;
        if !is_valid_pkce_verifier(&verifier) {
            return Err(OAuthError::invalid_request(
                "Code verifier must be 43-128 characters and use the PKCE character set",
            )
            .into());
        }
        let computed = if record.code_challenge_method.as_deref() == Some("S256") {
            crypto::pkce_s256(&verifier)
        } else {
            verifier
        };
        if !crypto::digests_equal(&computed, challenge) {
            return Err(OAuthError::invalid_grant("Code verifier mismatch").into());
        }
    } else if let Some(secret) = &secret {
        if !crypto::digests_equal(secret, &shared.client_secret()) {
            return Err(OAuthError::invalid_client("Invalid client secret").into());
        }
    } else {
        return Err(OAuthError::invalid_request("Client authentication required").into());
    }
    // 7. Scopes against the app's allowed scopes.
    let invalid: Vec<&str> = parse_scopes(&record.scope)
        .into_iter()
        .filter(|s| !is_scope_allowed(s))
        .collect();
    if !invalid.is_empty() {
        return Err(OAuthError::new("invalid_scope", format!("Invalid scopes: {}", invalid.join(", "))).into());
    }
    // 8. Issue.
    let user = shared.user(&record.user_id).ok_or(GrantError::Internal)?;
    let jwts = mint_jwts(
        shared,
        user,
        &record.scope,
        IdTokenNonce::CodeGrant(record.nonce.as_deref()),
    )?;
    let access_token = crypto::random_token43()?;
    let refresh_token = if has_scope(&record.scope, "offline_access") {
        Some(crypto::random_refresh_token()?)
    } else {
        None
    };
    {
        let mut state = shared.lock();
        state.access_tokens.insert(
            crypto::sha256_hex(&access_token),
            AccessRecord {
                user_id: user.id.clone(),
                scope: record.scope.clone(),
                expires_at: deadline(now, Duration::from_secs(shared.access_ttl_secs())),
            },
        );
        state.issued_tokens.push(access_token.clone());
        state.issued_tokens.push(jwts.access_token_jwt.clone());
        if has_scope(&record.scope, "openid") {
            state.issued_tokens.push(jwts.id_token.clone());
        }
        if let Some(refresh_token) = &refresh_token {
            state.issued_tokens.push(refresh_token.clone());
            let family_id = state.next_family_id;
            state.next_family_id += 1;
            state.refresh_tokens.insert(
                crypto::sha256_hex(refresh_token),
                RefreshRecord {
                    client_id: grant.client_id.clone(),
                    user_id: user.id.clone(),
                    scope: record.scope.clone(),
                    family_id,
                    expires_at: deadline(now, shared.config.refresh_token_ttl),
                    revoked: false,
                },
            );
        }
    }

    /// §3.1, keys in Ave's order.
    #[derive(Serialize)]
    struct CodeResponse<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
        scope: &'a str,
        user: TokenUser<'a>,
        access_token_jwt: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id_token: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        refresh_token: Option<&'a str>,
    }
    let body = CodeResponse {
        access_token: &access_token,
        token_type: "Bearer",
        expires_in: shared.access_ttl_secs(),
        scope: &record.scope,
        user: TokenUser::from(user),
        access_token_jwt: &jwts.access_token_jwt,
        user_id: has_scope(&record.scope, "user_id").then(|| crypto::account_id_for(&user.id)),
        id_token: has_scope(&record.scope, "openid").then_some(jwts.id_token.as_str()),
        refresh_token: refresh_token.as_deref(),
    };
    Ok(json(StatusCode::OK, &body))
}

/// The `user` object of the code response (`serializeIdentityForApp`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenUser<'a> {
    pub(crate) id: &'a str,
    pub(crate) display_name: &'a str,
    pub(crate) handle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) email: Option<&'a str>,
    pub(crate) avatar_url: Option<&'a str>,
    pub(crate) is_primary: bool,
}

impl<'a> From<&'a EmulatedUser> for TokenUser<'a> {
    fn from(user: &'a EmulatedUser) -> Self {
        TokenUser {
            id: &user.id,
            display_name: &user.display_name,
            handle: &user.handle,
            email: user.email.as_deref().filter(|e| !e.is_empty()),
            avatar_url: user.avatar_url.as_deref(),
            is_primary: true,
        }
    }
}

/// Whether the request's `Origin` (if any) may refresh without a secret:
/// absent, or the origin of a registered redirect URI.
pub(crate) fn origin_allowed(shared: &Shared, origin: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let state = shared.lock();
    state.redirect_uris.iter().any(|uri| {
        url::Url::parse(uri)
            .map(|u| u.origin().ascii_serialization() == origin)
            .unwrap_or(false)
    })
}

pub(crate) async fn refresh_token(
    shared: &Shared,
    grant: RefreshGrant,
    meta: &RequestMeta,
) -> Result<Response, GrantError> {
    let now = Instant::now();
    let hash = crypto::sha256_hex(&grant.refresh_token);
    // 1. Look the token up, joined with the client named in the request.
    let (stored, family_flagged) = {
        let state = shared.lock();
        let stored = state
            .refresh_tokens
            .get(&hash)
            .filter(|r| r.client_id == grant.client_id)
            .cloned();
        let flagged = stored
            .as_ref()
            .is_some_and(|r| state.flagged_families.contains(&r.family_id));
        (stored, flagged)
    };
    let Some(stored) = stored else {
        return Err(if grant.client_id == shared.config.client_id {
            OAuthError::invalid_grant("Refresh token not found")
        } else {
            OAuthError::invalid_client("Client not found")
        }
        .into());
    };
    // 2. Secret if sent; otherwise the Origin rule.
    if let Some(secret) = non_empty(grant.client_secret) {
        if !crypto::digests_equal(&secret, &shared.client_secret()) {
            return Err(OAuthError::invalid_client("Invalid client secret").into());
        }
    } else if !origin_allowed(shared, meta.origin.as_deref()) {
        return Err(OAuthError::invalid_client("Request origin is not allowed for this client").into());
    }
    // 3. Rotated/revoked or flagged: flag the whole family.
    if stored.revoked || family_flagged {
        shared.lock().flagged_families.insert(stored.family_id);
        return Err(OAuthError::invalid_grant("Refresh token revoked").into());
    }
    // 4. Expired: revoke this token only.
    if now > stored.expires_at {
        if let Some(record) = shared.lock().refresh_tokens.get_mut(&hash) {
            record.revoked = true;
        }
        return Err(OAuthError::invalid_grant("Refresh token expired").into());
    }
    let user = shared.user(&stored.user_id).ok_or(GrantError::Internal)?;
    // Ave signs the new JWTs concurrently with the claim; the yield lets a
    // concurrent request with the same token get this far too, so that the
    // race is decided by the atomic claim below, as in Ave.
    let jwts = mint_jwts(shared, user, &stored.scope, IdTokenNonce::RefreshGrant)?;
    let access_token = crypto::random_token43()?;
    let new_refresh_token = crypto::random_refresh_token()?;
    tokio::task::yield_now().await;
    // 6. Atomic claim; 7. store the new tokens.
    {
        let mut state = shared.lock();
        let family_flagged = state.flagged_families.contains(&stored.family_id);
        let claimed = match state.refresh_tokens.get_mut(&hash) {
            Some(record) if !record.revoked && !family_flagged => {
                record.revoked = true;
                true
            }
            _ => false,
        };
        if !claimed {
            state.flagged_families.insert(stored.family_id);
            return Err(OAuthError::invalid_grant("Refresh token was already used").into());
        }
        state.issued_tokens.extend([
            access_token.clone(),
            jwts.access_token_jwt.clone(),
            jwts.id_token.clone(),
            new_refresh_token.clone(),
        ]);
        let now = Instant::now();
        state.access_tokens.insert(
            crypto::sha256_hex(&access_token),
            AccessRecord {
                user_id: stored.user_id.clone(),
                scope: stored.scope.clone(),
                expires_at: deadline(now, Duration::from_secs(shared.access_ttl_secs())),
            },
        );
        state.refresh_tokens.insert(
            crypto::sha256_hex(&new_refresh_token),
            RefreshRecord {
                client_id: stored.client_id.clone(),
                user_id: stored.user_id.clone(),
                scope: stored.scope.clone(),
                family_id: stored.family_id,
                expires_at: deadline(now, shared.config.refresh_token_ttl),
                revoked: false,
            },
        );
    }

    /// §3.2, keys in Ave's order: no `scope`, no `user`.
    #[derive(Serialize)]
    struct RefreshResponse<'a> {
        access_token: &'a str,
        token_type: &'static str,
        expires_in: u64,
        refresh_token: &'a str,
        id_token: &'a str,
        access_token_jwt: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    }
    let body = RefreshResponse {
        access_token: &access_token,
        token_type: "Bearer",
        expires_in: shared.access_ttl_secs(),
        refresh_token: &new_refresh_token,
        id_token: &jwts.id_token,
        access_token_jwt: &jwts.access_token_jwt,
        user_id: has_scope(&stored.scope, "user_id").then(|| crypto::account_id_for(&user.id)),
    };
    Ok(json(StatusCode::OK, &body))
}
