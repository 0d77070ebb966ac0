//! The one error shape of the HTTP API: `{error, error_description}` (RFC 6749 §5.2 style).
//!
//! Handlers return `ApiError`; poem-openapi's own parse failures and routing
//! errors (unknown path, wrong method, oversized body) are turned into the same
//! shape by `catch_all`, so no response ever carries a framework's plain text.

use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

/// An OAuth-style error body.
#[derive(Debug, Clone, Object)]
pub(crate) struct ErrorBody {
    /// A machine-readable error code, e.g. `login_required`.
    pub error: String,
    /// A human-readable explanation. Never contains a token, code or secret.
    pub error_description: String,
}

/// Every error the API answers with.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub(crate) enum ApiError {
    /// The request is malformed or failed a check (`invalid_request`, `invalid_grant`, `invalid_token`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No valid session (`login_required`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// Refused: missing CSRF header or a cross-origin request from an origin that is not allowed
    /// (`invalid_request`), sign-in declined at Ave (`access_denied`), or a token for an audience or profile that
    /// page script may not mint: not configured, or a proxied route's without `browser = true` (`invalid_target`,
    /// the same answer for both).
    #[oai(status = 403)]
    Forbidden(Json<ErrorBody>),
    /// avemint cannot complete the request as configured, e.g. the app JWT exceeds `max_token_bytes` (`server_error`).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// Ave answered with something avemint cannot use (`server_error`).
    #[oai(status = 502)]
    BadGateway(Json<ErrorBody>),
    /// Ave, the session store or a claims hook is unreachable right now, or Ave's token budget has no room within
    /// the wait bound (`temporarily_unavailable`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] Option<String>),
}

fn body(error: &str, description: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_owned(),
        error_description: description.into(),
    })
}

impl ApiError {
    /// 400 `invalid_request`.
    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::BadRequest(body("invalid_request", description))
    }

    /// 400 with a specific code.
    pub(crate) fn bad_request(code: &str, description: impl Into<String>) -> Self {
        Self::BadRequest(body(code, description))
    }

    /// 401 `login_required`.
    pub(crate) fn login_required() -> Self {
        Self::Unauthorized(body("login_required", "no valid session; sign in at /auth/login"))
    }

    /// 403 with a code.
    pub(crate) fn forbidden(code: &str, description: impl Into<String>) -> Self {
        Self::Forbidden(body(code, description))
    }

    /// 403: the `X-CSRF: 1` header is missing.
    pub(crate) fn csrf() -> Self {
        Self::forbidden("invalid_request", "this endpoint requires the header `X-CSRF: 1`")
    }

    /// 500 `server_error`.
    pub(crate) fn internal(description: impl Into<String>) -> Self {
        Self::Internal(body("server_error", description))
    }

    /// 502 `server_error`.
    pub(crate) fn bad_gateway(description: impl Into<String>) -> Self {
        Self::BadGateway(body("server_error", description))
    }

    /// 503 `temporarily_unavailable`.
    pub(crate) fn unavailable(description: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(
            body("temporarily_unavailable", description),
            Some(retry_after_secs.to_string()),
        )
    }
}

fn bad_request(err: poem::Error) -> ApiError {
    // poem-openapi's messages name the parameter and the problem, never its value.
    ApiError::invalid_request(err.to_string())
}

/// Maps any error that escaped a handler (routing, parsing) to the JSON shape.
pub(crate) async fn catch_all(err: poem::Error) -> Response {
    // Handlers' own `ApiError`s arrive here already rendered: keep them.
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let (code, description) = match status.as_u16() {
        404 => ("not_found", "no such endpoint".to_owned()),
        405 => ("invalid_request", "method not allowed on this endpoint".to_owned()),
        413 => ("invalid_request", "request too large".to_owned()),
        414 => ("invalid_request", "request URI too long".to_owned()),
        431 => ("invalid_request", "request headers too large".to_owned()),
        s if (400..500).contains(&s) => ("invalid_request", err.to_string()),
        _ => {
            tracing::error!(status = status.as_u16(), "unhandled error");
            ("server_error", "internal error".to_owned())
        }
    };
    answer(status, code, description)
}

/// An `{error, error_description}` answer with any status (for answers outside the OpenAPI document).
pub(crate) fn answer(status: poem::http::StatusCode, code: &str, description: impl Into<String>) -> Response {
    let mut resp = body(code, description).into_response();
    resp.set_status(status);
    resp
}
