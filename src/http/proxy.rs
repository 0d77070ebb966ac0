//! The HTTP side of proxy mode: requests to a configured route (`[[routes]]`,
//! `AVEMINT_ROUTES`) are answered here, in front of the router, by the
//! upstream API's answer, streamed.
//!
//! In order: a top-level navigation is refused (403), `X-CSRF: 1` is required
//! (a same-origin `GET` that is not a navigation may omit it: `EventSource`
//! cannot set headers), the session is read and renewed exactly as for
//! `/auth/token` (401 `login_required` without one, and the upstream is never
//! called), the method allow-list (405 with `Allow`), then the app JWT of the
//! route's profile and the call (`proxy::Proxy::forward`). The guard has
//! already applied the origin check of `/auth/*` to these paths. Errors are
//! `{error, error_description}` JSON without upstream detail.

use std::sync::Arc;

use futures_util::TryStreamExt as _;
use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, Endpoint, EndpointExt, IntoResponse, Request, Response};

use super::AppState;
use super::auth::{self, CSRF_VALUE};
use super::cookies::{self, CookieChanges};
use super::errors::{ApiError, answer};
use crate::proxy::settings::safe_rest;
use crate::proxy::{ForwardError, Outgoing, RouteSettings};
use crate::traffic::client_ip::ClientIp;

/// Answers requests to proxied routes and passes every other request on to `inner`.
pub(crate) fn in_front_of<E: Endpoint + 'static>(inner: E) -> impl Endpoint {
    inner.around(|ep, req| async move {
        let state = req.data::<Arc<AppState>>().cloned();
        let route = state
            .as_ref()
            .and_then(|s| s.proxy.routes().find(req.uri().path()).cloned());
        Ok(match (state, route) {
            (Some(state), Some(route)) => forward(&state, &route, req).await.unwrap_or_else(|refused| refused),
            _ => ep.call(req).await?.into_response(),
        })
    })
}

/// `X-CSRF: 1`, or a same-origin `GET` that is not a navigation; never a top-level navigation.
fn check_csrf(req: &Request) -> Result<(), ApiError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let mode = header("sec-fetch-mode");
    if mode == Some("navigate") {
        return Err(ApiError::forbidden(
            "invalid_request",
            "a proxied API is not a page: top-level navigation is refused",
        ));
    }
    let event_source = req.method() == Method::GET && header("sec-fetch-site") == Some("same-origin") && mode.is_some();
    if header("x-csrf") == Some(CSRF_VALUE) || event_source {
        Ok(())
    } else {
        Err(ApiError::csrf())
    }
}

async fn forward(state: &AppState, route: &RouteSettings, mut req: Request) -> Result<Response, Response> {
    let refused = IntoResponse::into_response;
    check_csrf(&req).map_err(refused)?;
    let changes = req.extensions().get::<CookieChanges>().cloned().unwrap_or_default();
    let session = auth::current_session(state, &req, &changes).await.map_err(refused)?;
    let session = auth::renewed(state, session, &changes).await.map_err(refused)?;
    if !route.allows(req.method()) {
        return Err(method_not_allowed(route));
    }
    let path = req.uri().path().to_owned();
    let rest = route.rest(&path).unwrap_or_default();
    if !safe_rest(rest) {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the path has a dot segment or an encoded slash",
        ));
    }
    let profiles = state.minter.profiles();
    let profile = profiles
        .select(route.profile.as_deref(), None)
        .map_err(|e| refused(ApiError::from(e)))?;
    let bearer = state
        .proxy
        .bearers()
        .get(&state.minter, profile, &auth::subject(&session))
        .await
        .map_err(|e| refused(ApiError::from(e)))?;
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let client = client.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let mut headers = std::mem::take(req.headers_mut());
    cookies::strip_own(&mut headers, route.strip_cookies);
    let query = req.uri().query().map(str::to_owned);
    let out = Outgoing {
        method: req.method().clone(),
        rest,
        query: query.as_deref(),
        headers,
        body: Box::pin(req.take_body().into_bytes_stream()),
    };
    let answered = state.proxy.forward(route, out, bearer.token.expose(), client).await;
    answered.map(downstream).map_err(failed)
}

/// The upstream's answer as the browser gets it: status, headers without hop-by-hop ones (and without any
/// `Set-Cookie` for avemint's own cookies), the body streamed as it arrives.
fn downstream(upstream: reqwest::Response) -> Response {
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    crate::proxy::headers::strip_hop_by_hop(&mut headers);
    let set_cookies: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().cloned().collect();
    headers.remove(header::SET_COOKIE);
    for value in set_cookies.into_iter().filter(|v| !cookies::sets_own(v)) {
        headers.append(header::SET_COOKIE, value);
    }
    let body = Body::from_bytes_stream(upstream.bytes_stream().map_err(std::io::Error::other));
    let mut resp = Response::builder().status(status).body(body);
    *resp.headers_mut() = headers;
    resp
}

/// 405 with the route's methods in `Allow`.
fn method_not_allowed(route: &RouteSettings) -> Response {
    let mut resp = answer(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        "method not allowed on this route",
    );
    let allowed = route
        .methods
        .iter()
        .flatten()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        resp.headers_mut().insert(header::ALLOW, value);
    }
    resp
}

/// The JSON answer for a request that got no upstream answer.
fn failed(e: ForwardError) -> Response {
    let status = match e {
        ForwardError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ForwardError::Unforwardable => StatusCode::BAD_REQUEST,
        ForwardError::Unreachable => StatusCode::BAD_GATEWAY,
        ForwardError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
    };
    let code = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request"
    };
    answer(status, code, e.to_string())
}
