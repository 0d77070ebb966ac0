//! `POST /api/oauth/token`: schema validation, rate limit, the
//! authorization-code and refresh grants, and token minting.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use super::crypto::{self, CryptoFailure, JwsHeader, JwsSigner, SigningKey};
use super::http::{self, json, with_cors};
use super::state::{AccessRecord, RateWindow, RefreshRecord, deadline};
use super::{EmulatedUser, IdTokenDefect, RecordedTokenRequest, Shared, TokenFailure};

/// Largest request body read (Ave runs on Workers with a far larger limit;
/// a client never needs more than a few hundred bytes).
const BODY_LIMIT: usize = 1 << 20;

/// The camelCase names Ave's schema knows; used to report `camel_case`.
const CAMEL_KEYS: [&str; 9] = [
    "grantType",
    "redirectUri",
    "clientId",
    "clientSecret",
    "codeVerifier",
    "refreshToken",
    "subjectToken",
    "requestedResource",
    "requestedScope",
];

const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
const GRANT_REFRESH_TOKEN: &str = "refresh_token";
const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// An answer plus the `error` string recorded for it.
struct Reply {
    response: Response,
    error: Option<String>,
}

impl Reply {
    fn ok(response: Response) -> Reply {
        Reply { response, error: None }
    }

    /// A plain `{"error": ...}` answer.
    fn error_only(status: StatusCode, error: &str) -> Reply {
        Reply {
            response: http::error_only(status, error),
            error: Some(error.to_owned()),
        }
    }

    fn internal() -> Reply {
        Reply {
            response: http::internal_error(),
            error: Some("Internal Server Error".to_owned()),
        }
    }
}

/// An OAuth error (`{"error","error_description"}`, §6.1).
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }

    fn invalid_grant(description: &str) -> OAuthError {
        OAuthError::new("invalid_grant", description)
    }

    fn invalid_client(description: &str) -> OAuthError {
        OAuthError::new("invalid_client", description)
    }

    fn invalid_request(description: &str) -> OAuthError {
        OAuthError::new("invalid_request", description)
    }

    fn into_reply(self) -> Reply {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        Reply {
            response: json(
                self.status,
                &Body {
                    error: self.error,
                    error_description: &self.description,
                },
            ),
            error: Some(self.error.to_owned()),
        }
    }
}

/// Internal failures become Ave's generic 500.
enum GrantError {
    OAuth(OAuthError),
    Internal,
}

impl From<OAuthError> for GrantError {
    fn from(error: OAuthError) -> Self {
        GrantError::OAuth(error)
    }
}

impl From<CryptoFailure> for GrantError {
    fn from(_: CryptoFailure) -> Self {
        GrantError::Internal
    }
}

impl GrantError {
    fn into_reply(self) -> Reply {
        match self {
            GrantError::OAuth(error) => error.into_reply(),
            GrantError::Internal => Reply::internal(),
        }
    }
}

/// Request headers that matter to the token endpoint.
struct RequestMeta {
    content_type: Option<String>,
    origin: Option<String>,
}

/// Handles one token-endpoint call and records it.
pub(super) async fn handle(shared: &Arc<Shared>, mut req: Request) -> Response {
    let meta = RequestMeta {
        content_type: req.header(header::CONTENT_TYPE).map(str::to_owned),
        origin: req.header(header::ORIGIN).map(str::to_owned),
    };
    let authorization_header = req.headers().contains_key(header::AUTHORIZATION);
    let body = req.take_body().into_bytes_limit(BODY_LIMIT).await;

    // Hono's JSON validator: a JSON content type means "parse the body"
    // (failure => HTTPException => 500), anything else means `{}`.
    let parsed: Option<Value> = match &body {
        Ok(bytes) if is_json_content_type(meta.content_type.as_deref()) => serde_json::from_slice(bytes).ok(),
        Ok(_) => Some(Value::Object(Map::new())),
        Err(_) => None,
    };
    let mut record = RecordedTokenRequest {
        grant_type: None,
        content_type: meta.content_type.clone(),
        keys: Vec::new(),
        camel_case: false,
        authorization_header,
        status: 0,
        error: None,
    };
    if let Some(Value::Object(object)) = &parsed {
        record.keys = object.keys().cloned().collect();
        record.keys.sort();
        record.camel_case = object.keys().any(|k| CAMEL_KEYS.contains(&k.as_str()));
        record.grant_type = pick(object, "grantType", "grant_type")
            .and_then(Value::as_str)
            .map(str::to_owned);
    }

    // Watch for one refresh token presented twice at the same time (the family killer).
    let _presenting = parsed
        .as_ref()
        .and_then(Value::as_object)
        .filter(|o| pick(o, "grantType", "grant_type").and_then(Value::as_str) == Some(GRANT_REFRESH_TOKEN))
        .and_then(|o| pick(o, "refreshToken", "refresh_token"))
        .and_then(Value::as_str)
        .map(|token| Presenting::start(shared, crypto::sha256_hex(token)));

    let failure = shared.lock().token_failure;
    let reply = match failure {
        Some(TokenFailure::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            process(shared, parsed, &meta).await
        }
        Some(TokenFailure::DelayAfterProcessing(delay)) => {
            let reply = process(shared, parsed, &meta).await;
            // Record now: the client may be gone before the answer is sent.
            let mut early = record.clone();
            early.status = reply.response.status().as_u16();
            early.error = reply.error.clone();
            shared.lock().token_requests.push(early);
            tokio::time::sleep(delay).await;
            return with_cors(reply.response);
        }
        Some(failure) => injected_failure(shared, failure),
        None => process(shared, parsed, &meta).await,
    };

    let response = with_cors(reply.response);
    record.status = response.status().as_u16();
    record.error = reply.error;
    shared.lock().token_requests.push(record);
    response
}

/// One refresh token being handled; counts a concurrent presentation when
/// another request with the same token is in progress. Dropped when the
/// answer is sent or the client goes away.
struct Presenting<'a> {
    shared: &'a Shared,
    hash: String,
}

impl<'a> Presenting<'a> {
    fn start(shared: &'a Shared, hash: String) -> Self {
        let mut state = shared.lock();
        let count = state.refresh_presenting.entry(hash.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            state.concurrent_refresh_presentations += 1;
        }
        Presenting { shared, hash }
    }
}

impl Drop for Presenting<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(count) = state.refresh_presenting.get_mut(&self.hash) {
            *count -= 1;
            if *count == 0 {
                state.refresh_presenting.remove(&self.hash);
            }
        }
    }
}

/// Hono's `jsonRegex`: `^application/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$`.
fn is_json_content_type(content_type: Option<&str>) -> bool {
    let Some(rest) = content_type.and_then(|ct| ct.strip_prefix("application/")) else {
        return false;
    };
    let (mime, params) = match rest.find(';') {
        Some(at) => (&rest[..at], Some(&rest[at..])),
        None => (rest, None),
    };
    let Some(prefix) = mime.strip_suffix("json") else {
        return false;
    };
    if !prefix.is_empty() {
        let Some(suffix_base) = prefix.strip_suffix('+') else {
            return false;
        };
        if suffix_base.is_empty()
            || !suffix_base
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == '.')
        {
            return false;
        }
    }
    let Some(params) = params else {
        return true;
    };
    // Each parameter: ";" optional whitespace, a token, "=", a non-empty value.
    params.split(';').skip(1).all(|param| {
        let param = param.trim_start();
        match param.split_once('=') {
            Some((name, value)) => {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !value.is_empty()
            }
            None => false,
        }
    })
}

fn injected_failure(shared: &Shared, failure: TokenFailure) -> Reply {
    match failure {
        TokenFailure::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match status.as_u16() {
                400 => OAuthError::invalid_request("Emulated failure").into_reply(),
                401 => Reply::error_only(status, "unauthorized"),
                403 => OAuthError {
                    status,
                    error: "access_denied",
                    description: "Emulated failure".to_owned(),
                }
                .into_reply(),
                404 => Reply::error_only(status, "Not Found"),
                429 => Reply::error_only(status, "Too many attempts. Try again shortly."),
                503 => Reply::error_only(status, "Rate limiting temporarily unavailable. Try again shortly."),
                _ => Reply {
                    response: Response::builder()
                        .status(status)
                        .content_type("application/json")
                        .body(r#"{"error":"Internal Server Error"}"#),
                    error: Some("Internal Server Error".to_owned()),
                },
            }
        }
        TokenFailure::RateLimited { retry_after_secs } => {
            let reset_ms = unix_ms().saturating_add(retry_after_secs.saturating_mul(1000));
            rate_limited(retry_after_secs, shared.config.token_rate_limit_per_minute, reset_ms)
        }
        TokenFailure::MalformedBody => Reply {
            response: Response::builder()
                .status(StatusCode::OK)
                .content_type("application/json")
                .body("<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>"),
            error: None,
        },
        // Handled by the caller (sleep, then answer normally).
        TokenFailure::Delay(_) | TokenFailure::DelayAfterProcessing(_) => Reply::internal(),
    }
}

/// 429 with Ave's body and headers.
fn rate_limited(retry_after_secs: u64, limit: u32, reset_at_ms: u64) -> Reply {
    let mut reply = Reply::error_only(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Try again shortly.");
    let headers = reply.response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert("X-RateLimit-Limit", HeaderValue::from(limit));
    headers.insert("X-RateLimit-Reset", HeaderValue::from(reset_at_ms.div_ceil(1000)));
    reply
}

async fn process(shared: &Arc<Shared>, parsed: Option<Value>, meta: &RequestMeta) -> Reply {
    let Some(value) = parsed else {
        return Reply::internal();
    };
    let request = match validate(&value) {
        Ok(request) => request,
        Err(issues) => return zod_error(&issues),
    };
    if let Some(reply) = check_rate_limit(shared, request.client_id()) {
        return reply;
    }
    let result = match request {
        TokenRequest::AuthorizationCode(grant) => authorization_code(shared, grant),
        TokenRequest::RefreshToken(grant) => refresh_token(shared, grant, meta).await,
        TokenRequest::TokenExchange { .. } => Err(GrantError::OAuth(OAuthError::invalid_request(
            "Token exchange is not supported by the Ave emulator",
        ))),
    };
    match result {
        Ok(response) => Reply::ok(response),
        Err(error) => error.into_reply(),
    }
}

// ---------------------------------------------------------------------------
// Schema validation (zod-shaped, §2 and §6.2)
// ---------------------------------------------------------------------------

/// A zod 4 issue, keys in zod's order.
#[derive(Debug, Serialize)]
struct ZodIssue {
    #[serde(skip_serializing_if = "Option::is_none")]
    expected: Option<&'static str>,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    path: Vec<&'static str>,
    message: String,
}

impl ZodIssue {
    fn invalid_type(expected: &'static str, path: Vec<&'static str>, got: Option<&Value>) -> Self {
        ZodIssue {
            expected: Some(expected),
            code: "invalid_type",
            format: None,
            path,
            message: format!("Invalid input: expected {expected}, received {}", js_type(got)),
        }
    }
}

/// JavaScript-ish type names as zod reports them.
fn js_type(value: Option<&Value>) -> &'static str {
    match value {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// The raw zod-validator result: `{"success":false,"error":{"name":"ZodError","message":<pretty JSON of issues>}}`.
fn zod_error(issues: &[ZodIssue]) -> Reply {
    #[derive(Serialize)]
    struct ZodErrorBody<'a> {
        name: &'a str,
        message: String,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        success: bool,
        error: ZodErrorBody<'a>,
    }
    let Ok(message) = serde_json::to_string_pretty(issues) else {
        return Reply::internal();
    };
    Reply {
        response: json(
            StatusCode::BAD_REQUEST,
            &Body {
                success: false,
                error: ZodErrorBody {
                    name: "ZodError",
                    message,
                },
            },
        ),
        error: Some("ZodError".to_owned()),
    }
}

/// `raw[camel] ?? raw[snake]` (JavaScript nullish coalescing: a `null`
/// camelCase value falls through to the snake_case one).
fn pick<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    match object.get(camel) {
        Some(value) if !value.is_null() => Some(value),
        _ => object.get(snake),
    }
}

struct CodeGrant {
    code: String,
    redirect_uri: String,
    client_id: String,
    client_secret: Option<String>,
    code_verifier: Option<String>,
}

struct RefreshGrant {
    refresh_token: String,
    client_id: String,
    client_secret: Option<String>,
}

enum TokenRequest {
    AuthorizationCode(CodeGrant),
    RefreshToken(RefreshGrant),
    TokenExchange { client_id: String },
}

impl TokenRequest {
    fn client_id(&self) -> &str {
        match self {
            TokenRequest::AuthorizationCode(grant) => &grant.client_id,
            TokenRequest::RefreshToken(grant) => &grant.client_id,
            TokenRequest::TokenExchange { client_id } => client_id,
        }
    }
}

/// Collects zod issues while reading fields.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    issues: Vec<ZodIssue>,
}

impl<'a> Fields<'a> {
    fn required(&mut self, path: &'static str, value: Option<&'a Value>) -> String {
        match value {
            Some(Value::String(s)) => s.clone(),
            other => {
                self.issues.push(ZodIssue::invalid_type("string", vec![path], other));
                String::new()
            }
        }
    }

    fn optional(&mut self, path: &'static str, value: Option<&'a Value>) -> Option<String> {
        match value {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            other => {
                self.issues.push(ZodIssue::invalid_type("string", vec![path], other));
                None
            }
        }
    }

    fn camel(&self, camel: &str, snake: &str) -> Option<&'a Value> {
        pick(self.object, camel, snake)
    }
}

fn validate(value: &Value) -> Result<TokenRequest, Vec<ZodIssue>> {
    let Value::Object(object) = value else {
        return Err(vec![ZodIssue::invalid_type("object", Vec::new(), Some(value))]);
    };
    let mut fields = Fields {
        object,
        issues: Vec::new(),
    };
    let grant_type = fields.camel("grantType", "grant_type").and_then(Value::as_str);
    let request = match grant_type {
        Some(GRANT_AUTHORIZATION_CODE) => {
            let code = fields.required("code", object.get("code"));
            let redirect_uri = match fields.camel("redirectUri", "redirect_uri") {
                Some(Value::String(raw)) => match url::Url::parse(raw.trim()) {
                    Ok(url) => url.to_string(),
                    Err(_) => {
                        fields.issues.push(ZodIssue {
                            expected: None,
                            code: "invalid_format",
                            format: Some("url"),
                            path: vec!["redirectUri"],
                            message: "Invalid URL".to_owned(),
                        });
                        String::new()
                    }
                },
                other => fields.required("redirectUri", other),
            };
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            let client_secret = fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            let code_verifier = fields.optional("codeVerifier", fields.camel("codeVerifier", "code_verifier"));
            TokenRequest::AuthorizationCode(CodeGrant {
                code,
                redirect_uri,
                client_id,
                client_secret,
                code_verifier,
            })
        }
        Some(GRANT_REFRESH_TOKEN) => {
            let refresh_token = fields.required("refreshToken", fields.camel("refreshToken", "refresh_token"));
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            let client_secret = fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            TokenRequest::RefreshToken(RefreshGrant {
                refresh_token,
                client_id,
                client_secret,
            })
        }
        Some(GRANT_TOKEN_EXCHANGE) => {
            fields.required("subjectToken", fields.camel("subjectToken", "subject_token"));
            fields.required("requestedResource", fields.camel("requestedResource", "resource"));
            fields.required("requestedScope", fields.camel("requestedScope", "scope"));
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            match object.get("actor") {
                None | Some(Value::Object(_)) => {}
                other => fields
                    .issues
                    .push(ZodIssue::invalid_type("record", vec!["actor"], other)),
            }
            TokenRequest::TokenExchange { client_id }
        }
        _ => {
            return Err(vec![ZodIssue {
                expected: None,
                code: "invalid_union",
                format: None,
                path: vec!["grantType"],
                message: format!(
                    "Invalid discriminator value. Expected '{GRANT_AUTHORIZATION_CODE}' | '{GRANT_REFRESH_TOKEN}' | '{GRANT_TOKEN_EXCHANGE}'"
                ),
            }]);
        }
    };
    if fields.issues.is_empty() {
        Ok(request)
    } else {
        Err(fields.issues)
    }
}

// ---------------------------------------------------------------------------
// Rate limit (§1.2): a fixed 60-second window per lowercased client_id,
// counted after schema validation, every request counting.
// ---------------------------------------------------------------------------

/// `Some(429 reply)` when the client is over its limit.
fn check_rate_limit(shared: &Shared, client_id: &str) -> Option<Reply> {
    let limit = shared.config.token_rate_limit_per_minute;
    let now_ms = unix_ms();
    let mut state = shared.lock();
    let window = state
        .rate_windows
        .entry(client_id.to_lowercase())
        .or_insert(RateWindow {
            count: 0,
            reset_at_ms: now_ms + 60_000,
        });
    if window.reset_at_ms <= now_ms {
        *window = RateWindow {
            count: 0,
            reset_at_ms: now_ms + 60_000,
        };
    }
    window.count = window.count.saturating_add(1);
    if window.count <= limit {
        return None;
    }
    let retry_after = (window.reset_at_ms - now_ms).div_ceil(1000).max(1);
    let reset_at_ms = window.reset_at_ms;
    drop(state);
    Some(rate_limited(retry_after, limit, reset_at_ms))
}

// ---------------------------------------------------------------------------
// Grants
// ---------------------------------------------------------------------------

/// `^[A-Za-z0-9._~-]{43,128}$`.
fn is_valid_pkce_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Ave's `parseOAuthScopes`: whitespace and `+` separate scopes.
pub(super) fn parse_scopes(scope: &str) -> Vec<&str> {
    scope
        .split(|c: char| c.is_whitespace() || c == '+')
        .filter(|s| !s.is_empty())
        .collect()
}

pub(super) fn has_scope(scope: &str, wanted: &str) -> bool {
    parse_scopes(scope).contains(&wanted)
}

/// The app's default `allowedScopes`, plus the always-allowed dynamic ones.
pub(super) fn is_scope_allowed(scope: &str) -> bool {
    matches!(scope, "openid" | "profile" | "email" | "offline_access" | "user_id") || scope.starts_with("e2ee:")
}

/// Returns the secret unless it is absent or empty (Ave's `if (clientSecret)`).
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn authorization_code(shared: &Shared, grant: CodeGrant) -> Result<Response, GrantError> {
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
            && !crypto::digests_equal(secret, &shared.config.client_secret)
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
        if !crypto::digests_equal(secret, &shared.config.client_secret) {
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
struct TokenUser<'a> {
    id: &'a str,
    display_name: &'a str,
    handle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    avatar_url: Option<&'a str>,
    is_primary: bool,
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
fn origin_allowed(shared: &Shared, origin: Option<&str>) -> bool {
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

async fn refresh_token(shared: &Shared, grant: RefreshGrant, meta: &RequestMeta) -> Result<Response, GrantError> {
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
        if !crypto::digests_equal(&secret, &shared.config.client_secret) {
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

// ---------------------------------------------------------------------------
// JWT minting (§4)
// ---------------------------------------------------------------------------

/// Which grant an id_token is minted for (only the code grant has a nonce).
#[derive(Debug, Clone, Copy)]
enum IdTokenNonce<'a> {
    CodeGrant(Option<&'a str>),
    RefreshGrant,
}

struct MintedJwts {
    id_token: String,
    access_token_jwt: String,
}

/// id_token claims in Ave's order. `None` = omitted; `Some(None)` = `null`.
#[derive(Serialize)]
struct IdTokenClaims {
    iss: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    aud: Value,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    azp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    picture: Option<Option<String>>,
}

/// access_token_jwt claims in Ave's order.
#[derive(Serialize)]
struct AccessTokenClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    scope: &'a str,
    cid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<String>,
}

/// The audience used by [`IdTokenDefect::WrongAudience`] and
/// [`IdTokenDefect::AudienceArrayWithoutAzp`].
const OTHER_CLIENT: &str = "other-client";

fn mint_jwts(
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

/// Verifies an `access_token_jwt`-style token as Ave's `verifyJwt` does and
/// returns its claims. `Err(true)` means the header was not JSON (Ave answers
/// 400 "Invalid JSON body"); `Err(false)` means simply invalid.
pub(super) fn verify_access_jwt(key: &SigningKey, issuer: &str, token: &str) -> Result<Map<String, Value>, bool> {
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

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4))
        .unwrap_or(0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4))
        .unwrap_or(0)
}
