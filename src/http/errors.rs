//! The one error shape of the HTTP API: `{error, error_description}` (RFC 6749 §5.2 style).
//!
//! Handlers return `ApiError`; poem-openapi's own parse failures and routing
//! errors (unknown path, wrong method, oversized body) are turned into the same
//! shape by `catch_all`, so no response ever carries a framework's plain text.
//!
//! `Refusal` is what the guard (`security`, `cors`) answers instead of routing a request.
//!
//! The answers to the use cases' and components' errors (sign-in, token profiles, minting, renewal, the store,
//! Ave) are mapped here too, once, so every handler and the proxy answer the same failure the same way.

use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use avemint_core::ave::{AveError, IdTokenError};
use avemint_core::mint::MintError;
use avemint_core::mint::profiles::SelectError;
use avemint_core::session::{RenewError, StoreError};
use avemint_core::signin::SignInError;

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
    /// avemint cannot complete the request as configured (`server_error`), e.g. the app JWT exceeds
    /// `max_token_bytes`, or Ave rejected avemint's client credentials at sign-in (`AVE_CLIENT_ID`,
    /// `AVE_CLIENT_SECRET`).
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

/// The `{error, error_description}` body every error answer carries (the admin API's too).
pub(crate) fn error_body(error: &str, description: impl Into<String>) -> Json<ErrorBody> {
    Json(ErrorBody {
        error: error.to_owned(),
        error_description: description.into(),
    })
}

impl ApiError {
    /// 400 `invalid_request`.
    pub(crate) fn invalid_request(description: impl Into<String>) -> Self {
        Self::BadRequest(error_body("invalid_request", description))
    }

    /// 400 with a specific code.
    pub(crate) fn bad_request(code: &str, description: impl Into<String>) -> Self {
        Self::BadRequest(error_body(code, description))
    }

    /// 401 `login_required`.
    pub(crate) fn login_required() -> Self {
        Self::Unauthorized(error_body("login_required", "no valid session; sign in at /auth/login"))
    }

    /// 403 with a code.
    pub(crate) fn forbidden(code: &str, description: impl Into<String>) -> Self {
        Self::Forbidden(error_body(code, description))
    }

    /// 403: the `X-CSRF: 1` header is missing.
    pub(crate) fn csrf() -> Self {
        Self::forbidden("invalid_request", "this endpoint requires the header `X-CSRF: 1`")
    }

    /// 500 `server_error`.
    pub(crate) fn internal(description: impl Into<String>) -> Self {
        Self::Internal(error_body("server_error", description))
    }

    /// 502 `server_error`.
    pub(crate) fn bad_gateway(description: impl Into<String>) -> Self {
        Self::BadGateway(error_body("server_error", description))
    }

    /// 503 `temporarily_unavailable`.
    pub(crate) fn unavailable(description: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::Unavailable(
            error_body("temporarily_unavailable", description),
            Some(retry_after_secs.to_string()),
        )
    }
}

fn bad_request(err: poem::Error) -> ApiError {
    // poem-openapi's messages name the parameter and the problem, never its value.
    ApiError::invalid_request(err.to_string())
}

/// What the guard answers instead of routing a request. Every variant is an
/// `invalid_request` (or `rate_limited`) `{error, error_description}` body, and
/// `security::Guarded` documents each on every operation where the guard can give it.
#[derive(Debug, ApiResponse)]
pub(crate) enum Refusal {
    /// Refused before routing: the `Content-Length` header is malformed or the body could not be read
    /// (`invalid_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Refused before routing: a cross-origin request whose origin is neither this service nor in
    /// `AVEMINT_ALLOWED_ORIGINS` (`invalid_request`).
    #[oai(status = 403)]
    CrossOrigin(Json<ErrorBody>),
    /// Refused before routing: the request body is larger than 64 KiB (`invalid_request`).
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// Refused before routing: the query string is longer than 8 KiB (`invalid_request`).
    #[oai(status = 414)]
    UriTooLong(Json<ErrorBody>),
    /// Too many sign-in requests from this client (`rate_limited`; see `AVEMINT_LOGIN_RATE_LIMIT`).
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
    /// Refused before routing: the `Cookie` header is over 4 KiB, avemint's own cookies not counted (`invalid_request`).
    #[oai(status = 431)]
    HeaderFieldsTooLarge(Json<ErrorBody>),
}

/// An `invalid_request` body (the guard's refusals).
pub(crate) fn invalid_request_body(description: &str) -> Json<ErrorBody> {
    error_body("invalid_request", description)
}

impl Refusal {
    /// 403 for a request from an origin that is not allowed.
    pub(crate) fn cross_origin(description: &str) -> Self {
        Self::CrossOrigin(invalid_request_body(description))
    }

    /// 429 `rate_limited`, with `Retry-After` in seconds.
    pub(crate) fn rate_limited(retry_after_secs: u64) -> Self {
        Self::TooManyRequests(
            error_body(
                "rate_limited",
                format!("too many sign-in requests from this address; try again in {retry_after_secs} s"),
            ),
            retry_after_secs.to_string(),
        )
    }
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
    let mut resp = error_body(code, description).into_response();
    resp.set_status(status);
    resp
}

/// The description of every `invalid_target` answer of `POST /auth/token`.
const NOT_MINTABLE: &str = "no token profile page script may mint has this name or audience (a proxied route's profile needs `browser = true`)";

/// 503 for a store that cannot answer (logged, never with the error's detail in the answer).
pub(crate) fn store_unavailable(e: StoreError) -> ApiError {
    e.log("request");
    ApiError::unavailable(e.public_reason(), 5)
}

/// 503 (with when to retry) or 502 for a failed call to Ave.
pub(crate) fn ave_unavailable(e: &AveError) -> ApiError {
    match e {
        AveError::RateLimited { retry_after } => ApiError::unavailable(
            "Ave is busy; try again shortly",
            retry_after.map_or(10, |d| d.as_secs().max(1)),
        ),
        // avemint's own budget: answered like Ave's rate limit, with when room frees up.
        AveError::BudgetExhausted { retry_after } | AveError::HeldBack { retry_after, .. } => {
            ApiError::unavailable("Ave is busy; try again shortly", retry_after.as_secs().max(1))
        }
        e if e.is_transient() => ApiError::unavailable("Ave cannot be reached right now", 5),
        _ => ApiError::bad_gateway("Ave answered in an unexpected way"),
    }
}

impl From<SignInError> for ApiError {
    fn from(e: SignInError) -> Self {
        let description = e.to_string();
        match e {
            SignInError::MissingParameter(_)
            | SignInError::MalformedParameter(_)
            | SignInError::StateMismatch
            | SignInError::StateReplayed
            | SignInError::ProviderError => ApiError::invalid_request(description),
            SignInError::AccessDenied => ApiError::forbidden("access_denied", description),
            SignInError::CodeRejected(_) => ApiError::bad_request("invalid_grant", description),
            SignInError::ClientRejected(_) => ApiError::internal(description),
            SignInError::IdToken(IdTokenError::Keys(ref ave)) => ave_unavailable(ave),
            SignInError::IdToken(_) => ApiError::bad_request("invalid_token", description),
            SignInError::NoIdToken => ApiError::bad_gateway(description),
            SignInError::Ave(ref ave) => ave_unavailable(ave),
            SignInError::Store(e) => store_unavailable(e),
        }
    }
}

impl From<SelectError> for ApiError {
    fn from(e: SelectError) -> Self {
        if e.is_invalid_target() {
            // One answer for an unknown profile or audience and one page script may not mint (a proxied route's):
            // script cannot tell which exist.
            ApiError::forbidden("invalid_target", NOT_MINTABLE)
        } else {
            ApiError::invalid_request(e.to_string())
        }
    }
}

impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::Keys(_) | MintError::ClaimsEncoding => ApiError::unavailable("token signing failed", 1),
            MintError::Hook { profile, .. } => ApiError::unavailable(
                format!("the claims hook of token profile `{profile}` is unavailable; try again shortly"),
                5,
            ),
            e @ MintError::TooLarge { .. } => {
                tracing::error!(error = %e, "app JWT over the size limit; reduce the profile's claims or raise max_token_bytes");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<RenewError> for ApiError {
    fn from(e: RenewError) -> Self {
        match e {
            RenewError::LoginRequired => ApiError::login_required(),
            RenewError::Unavailable { reason, retry_after } => {
                ApiError::unavailable(reason, retry_after.as_secs().max(1))
            }
            RenewError::Rejected(reason) => ApiError::bad_gateway(reason),
        }
    }
}

/// The error answers one operation can really give (its handler's, not the guard's refusals, which
/// `security::Guarded` adds): each status with its description for this operation (`""`: keep the type's).
pub(crate) struct Answers {
    pub method: &'static str,
    /// The path as the OpenAPI document spells it (`/auth/sessions/{id}`).
    pub path: &'static str,
    pub errors: &'static [(u16, &'static str)],
}

/// Trims the documented responses of each operation in `table` to what it can answer: a 4xx or 5xx the shared error
/// type lists but the operation never gives is dropped, and each kept one gets the operation's own description, so
/// no operation lists another's answers (e.g. `invalid_target` on `/auth/session`). Operations not in `table` are
/// left as they are.
pub(crate) fn audit(apis: &mut [poem_openapi::registry::MetaApi], table: &[Answers]) {
    for path in apis.iter_mut().flat_map(|api| api.paths.iter_mut()) {
        for op in &mut path.operations {
            let Some(answers) = table
                .iter()
                .find(|a| a.path == path.path && a.method == op.method.as_str())
            else {
                continue;
            };
            op.responses.responses.retain_mut(|r| match r.status {
                Some(status) if status >= 400 => match answers.errors.iter().find(|(s, _)| *s == status) {
                    Some((_, description)) => {
                        if !description.is_empty() {
                            r.description = description;
                        }
                        true
                    }
                    None => false,
                },
                _ => true,
            });
        }
    }
}

/// An API whose operations' error answers are audited (`Answers`).
pub(crate) trait Audit {
    const ANSWERS: &'static [Answers];
}

/// `A` with each operation's documented error answers trimmed to its audited ones (see [`audit`]).
pub(crate) struct Audited<A>(pub A);

impl<A: poem_openapi::OpenApi + Audit> poem_openapi::OpenApi for Audited<A> {
    fn meta() -> Vec<poem_openapi::registry::MetaApi> {
        let mut apis = A::meta();
        audit(&mut apis, A::ANSWERS);
        apis
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        A::register(registry);
    }

    fn add_routes(
        self,
        route_table: &mut std::collections::HashMap<
            String,
            std::collections::HashMap<poem::http::Method, poem::endpoint::BoxEndpoint<'static>>,
        >,
    ) {
        self.0.add_routes(route_table);
    }
}

#[cfg(test)]
mod audit_tests {
    use super::*;
    use poem_openapi::OpenApi as _;
    use poem_openapi::registry::MetaApi;

    /// Every operation of the API and the admin API is audited, every table entry names an operation that exists,
    /// and each status it lists is one the operation's types can answer (so the table cannot list an answer nobody
    /// gives).
    #[test]
    fn every_operation_lists_exactly_its_audited_error_answers() {
        type Meta = fn() -> Vec<MetaApi>;
        let apis: [(Meta, &[Answers]); 2] = [
            (crate::http::auth::AuthApi::meta, crate::http::auth::ANSWERS),
            (crate::http::admin::AdminApi::meta, crate::http::admin::ANSWERS),
        ];
        for (meta, table) in apis {
            let mut audited = meta();
            audit(&mut audited, table);
            for path in audited.iter().flat_map(|a| a.paths.iter()) {
                for op in &path.operations {
                    let entry = table
                        .iter()
                        .find(|a| a.path == path.path && a.method == op.method.as_str())
                        .unwrap_or_else(|| panic!("{} {} is not audited", op.method, path.path));
                    let mut listed: Vec<u16> = op
                        .responses
                        .responses
                        .iter()
                        .filter_map(|r| r.status.filter(|s| *s >= 400))
                        .collect();
                    listed.sort_unstable();
                    let mut wanted: Vec<u16> = entry.errors.iter().map(|(s, _)| *s).collect();
                    wanted.sort_unstable();
                    assert_eq!(
                        listed, wanted,
                        "{} {}: an audited status its types cannot answer",
                        op.method, path.path
                    );
                }
            }
            let all = meta();
            for entry in table {
                let exists = all
                    .iter()
                    .flat_map(|a| a.paths.iter())
                    .any(|p| p.path == entry.path && p.operations.iter().any(|o| o.method.as_str() == entry.method));
                assert!(exists, "{} {} does not exist", entry.method, entry.path);
            }
        }
    }
}
