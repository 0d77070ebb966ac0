//! Response helpers every handler shares: JSON bodies, Ave's `{"error"}` answers (the generic 500 and 404) and
//! the CORS header of Ave's public OAuth paths. A module of their own so the handlers (token, userinfo,
//! reply, request, grants) and the router (`http`) both import them and no handler imports the router.

use poem::Response;
use poem::http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// A JSON response with `status`. Serialisation cannot fail for the types
/// used here; if it ever did, the answer is Ave's generic 500.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => Response::builder()
            .status(status)
            .content_type("application/json")
            .body(bytes),
        Err(_) => internal_error(),
    }
}

#[derive(Serialize)]
struct ErrorOnly<'a> {
    error: &'a str,
}

/// `{"error": <error>}` with `status`.
pub(crate) fn error_only(status: StatusCode, error: &str) -> Response {
    json(status, &ErrorOnly { error })
}

/// 500 `{"error":"Internal Server Error"}`.
pub(crate) fn internal_error() -> Response {
    Response::builder()
        .status(StatusCode::INTERNAL_SERVER_ERROR)
        .content_type("application/json")
        .body(r#"{"error":"Internal Server Error"}"#)
}

/// 404 `{"error":"Not Found"}` (Hono's not-found handler in Ave).
pub(crate) fn not_found() -> Response {
    error_only(StatusCode::NOT_FOUND, "Not Found")
}

/// Adds `Access-Control-Allow-Origin: *` (Ave's public OAuth paths).
pub(crate) fn with_cors(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}
