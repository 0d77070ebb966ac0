//! The HTTP side of proxy mode: requests to a configured route (`[[routes]]`,
//! `AVEMINT_ROUTES`) are answered here, in front of the router, by the
//! upstream API's answer, streamed.
//!
//! In order: a top-level navigation is refused (403), `X-CSRF: 1` is required
//! (a same-origin `GET` that is not a navigation may omit it: `EventSource`
//! cannot set headers), the session is read and renewed exactly as for
//! `/auth/token` (401 `login_required` without one, and the upstream is never
//! called), the method allow-list (405 with `Allow`), then the app JWT of the
//! route's profile, its `require_claims` (403 `access_denied`) and the call
//! (`proxy::Proxy::forward`). The route's `auth` changes the first steps: with
//! `optional` a request without a live session goes on without a bearer; with
//! `none` no session is read, no bearer attached, and safe methods need neither
//! `X-CSRF` nor the origin check. The guard has already applied the origin
//! check of `/auth/*` to these paths. Errors are
//! `{error, error_description}` JSON without upstream detail.
//!
//! A WebSocket handshake (`Upgrade: websocket`) takes the same path, except
//! for CSRF: a browser cannot set `X-CSRF` on a handshake but always sends
//! `Origin`, so the handshake needs an `Origin` that is avemint's own or in
//! `AVEMINT_ALLOWED_ORIGINS` (missing, `null` or another origin: 403, and the
//! upstream is never contacted). When the upstream switches protocols, the
//! browser gets the `101` and a task relays frames (`proxy::websocket`)
//! until either side closes or the session ends; an upstream that refuses
//! the handshake has its answer passed on like any other.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::{Body, IntoResponse, Request, Response};

use super::AppState;
use super::cookies::{self, CookieChanges};
use super::cors;
use super::errors::{ApiError, answer};
use super::request_id::RequestId;
use super::session_guard::{self, CSRF_VALUE};
use avemint_base::log_gate::LogGate;
use avemint_base::metrics::{ProxyRouteMetrics, StreamKind};
use avemint_core::proxy::settings::check_rest;
use avemint_core::proxy::{Answer, ForwardError, Outgoing, RouteAuth, RouteSettings, websocket};
use avemint_core::session::Session;
use avemint_core::traffic::client_ip::ClientIp;

/// The proxied routes in the OpenAPI document: their paths are configuration (`[[routes]]`, `AVEMINT_ROUTES`), so
/// no static operation can list them; a `Proxy` tag describes the answers avemint itself gives on them, and the
/// document a running avemint serves lists its routes under it (`document_routes`).
pub(crate) struct ProxyDoc;

/// The `Proxy` tag's description.
const PROXY_DOC: &str = "Proxy mode: every configured route prefix (`[[routes]]` `path`, or `AVEMINT_ROUTES`) and the \
paths below it are forwarded to the route's upstream API with an app JWT of the route's profile as \
`Authorization: Bearer`; the upstream's answer (status, headers without hop-by-hop ones, body streamed) is passed on \
unchanged, an upstream 401 included. A WebSocket handshake (`GET` with `Upgrade: websocket`) is forwarded the same \
way and answered `101` when the upstream switches protocols. Answers avemint gives itself, each a JSON \
`ErrorBody` `{error, error_description}` with no upstream detail: \
400 `invalid_request` (a path that some normaliser could read as leaving the upstream path: a dot segment in any \
spelling, a backslash, a control character, an encoded slash, an empty segment; a header that cannot be forwarded; a \
request body the browser framed badly); \
401 `login_required` (no session, an unknown or ended one, on a route with `auth = \"required\"`, the default; the \
upstream is never called; a route with `auth = \"optional\"` forwards such a request without `Authorization`, one with \
`auth = \"none\"` never reads the session nor attaches a bearer); \
403 `access_denied` (the app JWT of the route's profile lacks a claim the route's `require_claims` asks for; the \
upstream is never called); \
403 `invalid_request` (`X-CSRF: 1` missing on a request that needs it, a top-level navigation \
`Sec-Fetch-Mode: navigate`, an `Origin` or `Sec-Fetch-Site` from another origin not in `AVEMINT_ALLOWED_ORIGINS` (on a \
route with `auth = \"none\"` only for methods other than `GET`, `HEAD` and `OPTIONS`), or \
a WebSocket handshake whose `Origin` is missing, `null`, not allowed or not written exactly as browsers serialise \
it); \
405 `invalid_request` with `Allow` (a method outside the route's `methods`); \
413 `invalid_request` (a body over the route's `max_request_bytes`); \
414 and 431 as for every path (query over 8 KiB, Cookie header over 4 KiB); \
429 `rate_limited` with `Retry-After` (a WebSocket handshake while the session has \
`AVEMINT_MAX_WEBSOCKETS_PER_SESSION` or the instance `AVEMINT_MAX_WEBSOCKETS` open; the upstream is never called); \
502 `server_error` (the upstream cannot be reached, or Ave answered the session's renewal with an error); \
503 `temporarily_unavailable` with `Retry-After` (the session store or Ave is unavailable during renewal); \
504 `server_error` (no status and headers from the upstream within the route's `timeout_ms`). An answer that is not a \
stream (neither `text/event-stream` nor without `Content-Length`) whose body has not arrived whole within `timeout_ms` is \
cut: its status was already sent. Every answer still streaming (server-sent events, a download, a WebSocket) ends \
within 5 s of its session's end (logout, expiry, an administrator ending it, …). Ambiguous request framing (two \
different `Content-Length` values) is answered 400 by the HTTP server itself, without a body, and never forwarded.";

impl poem_openapi::OpenApi for ProxyDoc {
    fn meta() -> Vec<poem_openapi::registry::MetaApi> {
        Vec::new()
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        registry.tags.insert(poem_openapi::registry::MetaTag {
            name: "Proxy",
            description: Some(PROXY_DOC),
            external_docs: None,
        });
        <super::errors::ErrorBody as poem_openapi::types::Type>::register(registry);
    }

    fn add_routes(
        self,
        _: &mut std::collections::HashMap<
            String,
            std::collections::HashMap<Method, poem::endpoint::BoxEndpoint<'static>>,
        >,
    ) {
    }
}

/// The methods a route that lists none forwards, as the OpenAPI document names them.
const ALL_METHODS: [&str; 6] = ["get", "put", "post", "delete", "patch", "head"];

/// The answers avemint gives itself on a proxied route (see `PROXY_DOC`), by status.
const OWN_ANSWERS: [(&str, &str); 10] = [
    (
        "400",
        "A path some normaliser could read as leaving the upstream path, a header that cannot be forwarded, or a badly framed body (`invalid_request`).",
    ),
    (
        "401",
        "No valid session (`login_required`); the upstream is never called.",
    ),
    (
        "403",
        "`X-CSRF: 1` missing, a top-level navigation, another origin not in `AVEMINT_ALLOWED_ORIGINS`, or a WebSocket handshake whose `Origin` is not allowed (`invalid_request`).",
    ),
    (
        "405",
        "A method the route does not forward (`invalid_request`, with `Allow`).",
    ),
    (
        "413",
        "A body over the route's `max_request_bytes` (`invalid_request`).",
    ),
    (
        "429",
        "A WebSocket over the per-session or per-instance limit (`rate_limited`, with `Retry-After`).",
    ),
    (
        "502",
        "The upstream cannot be reached, or Ave answered the session's renewal with an error (`server_error`).",
    ),
    (
        "503",
        "The session store or Ave is unavailable during renewal (`temporarily_unavailable`, with `Retry-After`).",
    ),
    (
        "504",
        "No status and headers from the upstream within the route's `timeout_ms` (`server_error`).",
    ),
    (
        "default",
        "The upstream API's answer, passed on: its status, its headers without hop-by-hop ones, its body streamed.",
    ),
];

/// Adds each route of `table` to the OpenAPI document `doc` (JSON), under the `Proxy` tag: its prefix, the methods
/// it forwards and the answers avemint gives itself. The upstream's URL and the route's token profile are
/// configuration the document never shows.
pub(crate) fn document_routes(doc: &mut serde_json::Value, table: &avemint_core::proxy::RouteTable) {
    use serde_json::{Value, json};
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for route in table.routes().all() {
        let methods: Vec<String> = match &route.methods {
            Some(list) => list.iter().map(|m| m.as_str().to_ascii_lowercase()).collect(),
            None => ALL_METHODS.iter().map(|m| (*m).to_owned()).collect(),
        };
        let responses: serde_json::Map<String, Value> = OWN_ANSWERS
            .iter()
            .map(|(status, description)| {
                let answer = match *status {
                    "default" => json!({ "description": description }),
                    _ => json!({
                        "description": description,
                        "content": { "application/json; charset=utf-8": {
                            "schema": { "$ref": "#/components/schemas/ErrorBody" } } }
                    }),
                };
                ((*status).to_owned(), answer)
            })
            .collect();
        let operation = json!({
            "tags": ["Proxy"],
            "summary": "A proxied route (configuration): this prefix and every path below it",
            "description": format!(
                "Forwarded to the route's upstream API with an app JWT of the route's token profile as \
                 `Authorization: Bearer`; the path below `{}` and the query are sent as they came. A body may be up \
                 to {} bytes; the upstream has {} ms to answer. See the `Proxy` tag.",
                route.path,
                route.max_request_bytes,
                route.timeout.as_millis()
            ),
            "parameters": [{
                "name": "X-CSRF",
                "in": "header",
                "required": false,
                "description": "Must be `1`, except on a same-origin `GET` that is not a navigation (`EventSource`) \
                                and on a WebSocket handshake (its `Origin` is checked instead).",
                "schema": { "type": "string" }
            }],
            "responses": responses,
        });
        let item: serde_json::Map<String, Value> = methods.into_iter().map(|m| (m, operation.clone())).collect();
        paths.insert(route.path.clone(), Value::Object(item));
    }
}

/// Answers a request to the proxied route `route` (matched by the caller, before the API's router): forwarded
/// upstream, or refused.
pub(crate) async fn handle(
    state: &Arc<AppState>,
    route: &RouteSettings,
    metrics: &ProxyRouteMetrics,
    req: Request,
) -> Response {
    forward(state, route, metrics, req)
        .await
        .unwrap_or_else(|refused| refused)
}

/// A WebSocket handshake needs an `Origin` that is avemint's own or in `AVEMINT_ALLOWED_ORIGINS` (browsers
/// always send one, and cannot add `X-CSRF` to a handshake), written exactly as a browser serialises it:
/// `scheme://host[:port]`, lower case, the default port left out, no trailing `/`, user-info or path, hosts as
/// the URL standard writes them (so no `HTTP://…`, no decimal or hex IP address, no trailing dot).
pub(crate) fn check_handshake_origin(state: &AppState, req: &Request) -> Result<(), ApiError> {
    let allowed = cors::origin(req.headers()).is_some_and(|origin| {
        let serialised = cors::normalise(origin).is_some_and(|o| o == origin && !o.ends_with('.'));
        serialised
            && (cors::normalise(state.public_url.as_str()).as_deref() == Some(origin)
                || state.security.allowed_origins.contains(origin))
    });
    allowed.then_some(()).ok_or_else(|| {
        ApiError::forbidden(
            "invalid_request",
            "a WebSocket handshake needs an Origin that is this service or in AVEMINT_ALLOWED_ORIGINS",
        )
    })
}

/// Whether `method` is safe (RFC 9110 §9.2.1): on a route with `auth = "none"` it needs neither `X-CSRF` nor a
/// same-origin `Origin`.
pub(crate) fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// `X-CSRF: 1`, or a same-origin `GET` that is not a navigation; never a top-level navigation. On a route with
/// `auth = "none"` a safe method needs neither (no session, no bearer: nothing to forge); other methods still do.
fn check_csrf(req: &Request, auth: RouteAuth) -> Result<(), ApiError> {
    if auth == RouteAuth::None && is_safe(req.method()) {
        return Ok(());
    }
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

/// The request's session as the route's `auth` says: required (401 `login_required` without one), optional (none
/// when the request has no live session), or not read at all. A session is renewed first when Ave's access token
/// is expiring, exactly as for `/auth/token`.
async fn session_for(
    state: &AppState,
    auth: RouteAuth,
    req: &Request,
    changes: &CookieChanges,
) -> Result<Option<Arc<Session>>, ApiError> {
    let signed_in = async {
        let session = session_guard::current_session(state, req, changes).await?;
        session_guard::renewed(state, session, changes).await
    };
    match auth {
        RouteAuth::None => Ok(None),
        RouteAuth::Required => signed_in.await.map(Some),
        RouteAuth::Optional => match signed_in.await {
            Ok(session) => Ok(Some(session)),
            // No session, or one that is over: the request goes on without a bearer.
            Err(ApiError::Unauthorized(_)) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

async fn forward(
    state: &Arc<AppState>,
    route: &RouteSettings,
    metrics: &ProxyRouteMetrics,
    req: Request,
) -> Result<Response, Response> {
    let refused = IntoResponse::into_response;
    if websocket::is_handshake(req.method(), req.headers()) {
        check_handshake_origin(state, &req).map_err(refused)?;
    } else {
        check_csrf(&req, route.auth).map_err(refused)?;
    }
    let changes = req.extensions().get::<CookieChanges>().cloned().unwrap_or_default();
    let session = session_for(state, route.auth, &req, &changes).await.map_err(refused)?;
    if !route.allows(req.method()) {
        return Err(method_not_allowed(route));
    }
    let path = req.uri().path().to_owned();
    if let Err(unsafe_path) = check_rest(route.rest(&path).unwrap_or_default()) {
        return Err(answer(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            unsafe_path.to_string(),
        ));
    }
    let bearer = match &session {
        Some(session) => {
            let profiles = state.minter.profiles();
            let profile = profiles
                .select(route.profile.as_deref(), None)
                .map_err(|e| refused(ApiError::from(e)))?;
            let bearer = state
                .proxy
                .bearers()
                .get(&state.minter, profile, &session_guard::subject(session))
                .await
                .map_err(|e| refused(ApiError::from(e)))?;
            if let Some(claim) = route.require_claims.unmet(&bearer.claims) {
                tracing::info!(route = %route.path, claim, "a proxied request was refused: the session's token lacks a required claim");
                return Err(refused(ApiError::forbidden(
                    "access_denied",
                    "this route requires claims the signed-in user does not have",
                )));
            }
            Some(bearer)
        }
        None => None,
    };
    let bearer = bearer.as_ref().map(|b| b.token.expose().as_str());
    relay(state, route, metrics, req, session.as_deref(), bearer).await
}

/// Sends `req` to `route`'s upstream with `bearer` (if any) and answers with the upstream's answer, streamed; a
/// WebSocket handshake the upstream accepts is switched and relayed. Everything long-lived ends with `session`
/// (when there is one). The checks (CSRF or the handshake's `Origin`, the session, methods, the path) are the
/// caller's: the proxied routes (`forward`) and the SPA's development server (`spa_host`).
pub(crate) async fn relay(
    state: &Arc<AppState>,
    route: &RouteSettings,
    metrics: &ProxyRouteMetrics,
    mut req: Request,
    session: Option<&Session>,
    bearer: Option<&str>,
) -> Result<Response, Response> {
    let handshake = websocket::is_handshake(req.method(), req.headers());
    let path = req.uri().path().to_owned();
    let rest = route.rest(&path).unwrap_or_default();
    let client = req.extensions().get::<ClientIp>().map(|c| c.0);
    let client = client.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let body_may_follow = body_may_follow(&req);
    let mut headers = std::mem::take(req.headers_mut());
    cookies::strip_own(&mut headers, route.strip_cookies);
    let query = req.uri().query().map(str::to_owned);
    let request_id = req.extensions().get::<RequestId>().map(|id| id.as_str().to_owned());
    let out = Outgoing {
        method: req.method().clone(),
        rest,
        query: query.as_deref(),
        headers,
        request_id: request_id.as_deref(),
        body_may_follow,
        body: Box::pin(req.take_body().into_bytes_stream()),
    };
    // Taken before the request is gone: the browser's side of a WebSocket once the `101` is sent, and its place
    // within the WebSocket limits (before the upstream is contacted).
    let browser_upgrade = handshake.then(|| req.take_upgrade().ok()).flatten();
    let slot = match browser_upgrade {
        Some(_) => Some(state.proxy.sockets().open(session.map(|s| s.key)).map_err(too_many)?),
        None => None,
    };
    let answered = state.proxy.forward(route, metrics, out, bearer, client).await;
    let answer = answered.map_err(failed)?;
    let ended: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match session {
        Some(session) => Box::pin(session_ended(state, session)),
        // Nothing to end with: the answer lasts as long as the upstream and the browser keep it.
        None => Box::pin(std::future::pending()),
    };
    match (browser_upgrade, slot) {
        (Some(browser), Some(slot)) if answer.response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let relay = Relay {
                browser,
                upstream: answer.response,
                slot,
                max_message: route.max_message_bytes,
            };
            Ok(switch(metrics, relay, ended))
        }
        _ => Ok(downstream(answer, metrics, route, bearer, ended)),
    }
}

/// Whether `req` may have a body: an HTTP/1.x request without `Content-Length` and `Transfer-Encoding` has none
/// (RFC 9112 §6.3); an HTTP/2 one may have one until its stream ends.
fn body_may_follow(req: &Request) -> bool {
    req.version() >= poem::http::Version::HTTP_2
        || req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING)
}

/// Resolves once `session` has ended (logout here or elsewhere, expiry, idle timeout, the per-user cap, an admin),
/// checked every `proxy::SESSION_CHECK` without counting as the user's activity: what ends every long-lived
/// proxied answer. A store that cannot answer right now ends nothing (as for HTTP calls served from memory); only a
/// session known to be gone does.
fn session_ended(state: &Arc<AppState>, session: &Session) -> impl Future<Output = ()> + Send + 'static {
    let state = state.clone();
    let (sub, sid) = (session.data.sub.clone(), session.data.sid.as_str().to_owned());
    async move {
        avemint_core::proxy::session_ended(|| async { !matches!(state.sessions.is_live(&sub, &sid).await, Ok(false)) })
            .await;
    }
}

/// What a switched WebSocket is relayed with.
struct Relay {
    browser: poem::OnUpgrade,
    upstream: avemint_core::proxy::upstream::UpstreamResponse,
    /// Its place within the WebSocket limits, given back when the relay ends.
    slot: websocket::SocketSlot,
    max_message: usize,
}

/// The browser's `101 Switching Protocols`, and a task relaying the WebSocket until either side closes or the
/// session ends (`ended`).
fn switch(metrics: &ProxyRouteMetrics, relay: Relay, ended: impl Future<Output = ()> + Send + 'static) -> Response {
    let mut resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).finish();
    *resp.headers_mut() = websocket::switching_headers(relay.upstream.headers());
    let open = metrics.stream(StreamKind::WebSocket);
    tokio::spawn(async move {
        let (_open, _slot) = (open, relay.slot);
        let (Ok(browser), Ok(upstream)) = (relay.browser.await, hyper::upgrade::on(relay.upstream).await) else {
            tracing::debug!("a proxied WebSocket closed before it opened");
            return;
        };
        let upstream = hyper_util::rt::TokioIo::new(upstream);
        if websocket::relay(browser, upstream, relay.max_message, ended).await == websocket::Ended::SessionEnded {
            tracing::debug!("a proxied WebSocket was closed because its session ended");
        }
    });
    resp
}

/// 429 `rate_limited` with `Retry-After`: a WebSocket over `AVEMINT_MAX_WEBSOCKETS_PER_SESSION` or
/// `AVEMINT_MAX_WEBSOCKETS` (the upstream is never contacted).
fn too_many(e: websocket::TooMany) -> Response {
    let mut resp = answer(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string());
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static(SOCKETS_RETRY_AFTER));
    resp
}

/// `Retry-After` of a WebSocket refused for the limits, in seconds: open sockets end on their own time.
const SOCKETS_RETRY_AFTER: &str = "5";

/// At most one warning a minute about upstream answers that echo the bearer.
static BEARER_ECHOED: LogGate = LogGate::new(Duration::from_secs(60));

/// The upstream's answer as the browser gets it: status, headers without hop-by-hop ones, without any `Set-Cookie`
/// that sets or may be taken for avemint's own cookies, and without any header whose value contains `bearer` (the
/// app JWT sent upstream, or its signature: logged with a rate-limited warning, never the value), the body streamed
/// as it arrives, cut when the session ends (`ended`) and bounded by the route's `timeout_ms` as a whole unless it
/// is a stream (see `Answer::body`).
fn downstream(
    answer: Answer,
    metrics: &ProxyRouteMetrics,
    route: &RouteSettings,
    bearer: Option<&str>,
    ended: impl Future<Output = ()> + Send + 'static,
) -> Response {
    let status = answer.response.status();
    let mut headers = answer.response.headers().clone();
    avemint_core::proxy::headers::strip_hop_by_hop(&mut headers);
    let echoed = bearer.map(|b| avemint_core::proxy::headers::drop_echoes(&mut headers, b));
    for name in echoed.into_iter().flatten() {
        if let Some(held_back) = BEARER_ECHOED.pass() {
            tracing::warn!(route = %route.path, header = %name, held_back, "an upstream answer header contained the bearer sent upstream: dropped");
        }
    }
    let set_cookies: Vec<HeaderValue> = headers.get_all(header::SET_COOKIE).iter().cloned().collect();
    headers.remove(header::SET_COOKIE);
    for value in set_cookies.into_iter().filter(|v| !cookies::sets_own(v)) {
        headers.append(header::SET_COOKIE, value);
    }
    let body = Body::from_bytes_stream(answer.body(metrics.stream(StreamKind::Http), ended));
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
        ForwardError::Unforwardable | ForwardError::BadBody => StatusCode::BAD_REQUEST,
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
