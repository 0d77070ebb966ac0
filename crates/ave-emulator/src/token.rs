//! `POST /api/oauth/token`: the endpoint itself. Reads the body, checks the
//! content type, applies injected failures and the per-client rate limit,
//! counts concurrent presentations of one refresh token, hands the parsed
//! request to the grants and records every call for the tests.

use std::sync::Arc;

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response};
use serde_json::{Map, Value};

use crate::crypto;
use crate::grants::{authorization_code, refresh_token};
use crate::jwt::unix_ms;
use crate::reply::{GrantError, OAuthError, Reply};
use crate::request::{CAMEL_KEYS, GRANT_REFRESH_TOKEN, RequestMeta, TokenRequest, pick, validate, zod_error};
use crate::respond::with_cors;
use crate::state::RateWindow;

use crate::{RecordedTokenRequest, Shared, TokenFailure};

/// Largest request body read (Ave runs on Workers with a far larger limit;
/// a client never needs more than a few hundred bytes).
pub(crate) const BODY_LIMIT: usize = 1 << 20;

/// Handles one token-endpoint call and records it.
pub(crate) async fn handle(shared: &Arc<Shared>, mut req: Request) -> Response {
    let meta = RequestMeta {
        content_type: req.header(header::CONTENT_TYPE).map(str::to_owned),
        origin: req.header(header::ORIGIN).map(str::to_owned),
    };
    let authorization_header = req.headers().contains_key(header::AUTHORIZATION);
    let traceparent = req.header("traceparent").map(str::to_owned);
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
        traceparent,
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
pub(crate) struct Presenting<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) hash: String,
}

impl<'a> Presenting<'a> {
    pub(crate) fn start(shared: &'a Shared, hash: String) -> Self {
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
pub(crate) fn is_json_content_type(content_type: Option<&str>) -> bool {
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

pub(crate) fn injected_failure(shared: &Shared, failure: TokenFailure) -> Reply {
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
pub(crate) fn rate_limited(retry_after_secs: u64, limit: u32, reset_at_ms: u64) -> Reply {
    let mut reply = Reply::error_only(StatusCode::TOO_MANY_REQUESTS, "Too many attempts. Try again shortly.");
    let headers = reply.response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    headers.insert("X-RateLimit-Limit", HeaderValue::from(limit));
    headers.insert("X-RateLimit-Reset", HeaderValue::from(reset_at_ms.div_ceil(1000)));
    reply
}

pub(crate) async fn process(shared: &Arc<Shared>, parsed: Option<Value>, meta: &RequestMeta) -> Reply {
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
// Rate limit (§1.2): a fixed 60-second window per lowercased client_id,
// counted after schema validation, every request counting.
// ---------------------------------------------------------------------------

/// `Some(429 reply)` when the client is over its limit.
pub(crate) fn check_rate_limit(shared: &Shared, client_id: &str) -> Option<Reply> {
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
