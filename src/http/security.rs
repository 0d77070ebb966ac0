//! Browser-facing security policy, applied to every request before routing
//! and to every response after it.
//!
//! In order: size limits (cookie header, query, body) so hostile input is
//! refused before anything parses it; CORS preflights; the cross-origin
//! check for the `/auth/*` JSON endpoints and the proxied routes (CSRF
//! defence in depth next to `X-CSRF: 1`); per-client rate limits on sign-in.
//! A proxied route's body is not read here: the proxy streams it under the
//! route's own `max_request_bytes`. Responses then get the
//! security headers: `nosniff` everywhere, `no-store` and `no-referrer` on
//! `/auth/*`, a restrictive CSP with `frame-ancestors 'none'` on HTML, and
//! HSTS when the public URL is https.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use poem::endpoint::BoxEndpoint;
use poem::http::{HeaderMap, HeaderValue, Method, header};
use poem::{IntoResponse, Request, Response};
use poem_openapi::registry::{MetaApi, Registry};
use poem_openapi::{ApiResponse, OpenApi};

use super::cors::{self, AllowedOrigins};
use super::errors::{Refusal, invalid_request_body};
use avemint_base::route::{Limited, Route};
use avemint_base::web_url::PublicUrl;
use avemint_core::proxy::{RouteAuth, RouteSettings};
use avemint_core::traffic::client_ip::{ClientIp, TrustedProxies};
use avemint_core::traffic::rate_limit::{RateLimit, RateLimiter};

/// All `Cookie` headers together may not be longer than this, not counting avemint's own two cookies (see
/// `cookies::counted_len`), so they are never why a request is refused.
pub(crate) const MAX_COOKIE_HEADER: usize = 4 * 1024;
/// Longest query string accepted.
pub(crate) const MAX_QUERY: usize = 8 * 1024;
/// Largest request body accepted (the API takes small JSON bodies only).
pub(crate) const MAX_BODY: usize = 64 * 1024;

const CSP_HTML: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const HSTS: &str = "max-age=31536000";

/// Whether the guard can give the answer with this status to a request for `path`.
fn refusal_possible(status: u16, path: &str) -> bool {
    match status {
        403 => is_auth_api(path),
        429 => limited(path).is_some(),
        _ => true,
    }
}

/// The API with the guard's answers added to each operation's documented responses, so the
/// OpenAPI document lists every status a client can receive. A status the operation documents
/// itself (e.g. `ApiError`'s 400 and 403) keeps the operation's description.
pub(crate) struct Guarded<A>(pub A);

impl<A: OpenApi> OpenApi for Guarded<A> {
    fn meta() -> Vec<MetaApi> {
        let mut apis = A::meta();
        super::errors::audit(&mut apis, super::auth::ANSWERS);
        for path in apis.iter_mut().flat_map(|api| api.paths.iter_mut()) {
            for op in &mut path.operations {
                // `X-CSRF` is read as optional so that its absence is answered 403 `invalid_request` (not a parse
                // error), but no request succeeds without it: the document says it is required.
                for param in op.params.iter_mut().filter(|p| p.name == "X-CSRF") {
                    param.required = true;
                }
                let responses = &mut op.responses.responses;
                for refusal in Refusal::meta().responses {
                    let status = refusal.status.unwrap_or_default();
                    if refusal_possible(status, &path.path) && !responses.iter().any(|r| r.status == Some(status)) {
                        responses.push(refusal);
                    }
                }
                responses.sort_by_key(|r| r.status);
            }
        }
        apis
    }

    fn register(registry: &mut Registry) {
        A::register(registry);
        Refusal::register(registry);
    }

    fn add_routes(self, route_table: &mut HashMap<String, HashMap<Method, BoxEndpoint<'static>>>) {
        self.0.add_routes(route_table);
    }
}

/// `AVEMINT_DOCS`: whether `/docs` (Swagger UI) and `/openapi.json` are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Docs {
    /// Served (the default), `/docs` under a hash-based CSP.
    #[default]
    On,
    /// Neither is served (404).
    Off,
}

impl Docs {
    /// `on` or `off` (also `true`/`false`, `1`/`0`).
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        on_off(raw).map(|on| if on { Self::On } else { Self::Off })
    }
}

/// `AVEMINT_TOKEN_ENDPOINT` (`token_endpoint`): whether `POST /auth/token` exists. Off for proxy-only deployments,
/// whose page script never holds an app JWT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenEndpoint {
    /// Served (the default): page script mints the profiles that allow it (`browser`).
    #[default]
    On,
    /// Not served (404): no profile is mintable by page script.
    Off,
}

impl TokenEndpoint {
    /// `on` or `off` (also `true`/`false`, `1`/`0`).
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        on_off(raw).map(|on| if on { Self::On } else { Self::Off })
    }
}

/// A switch: `on`/`true`/`1` or `off`/`false`/`0` (any case).
pub(crate) fn on_off(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err("must be `on` or `off`".into()),
    }
}

/// The security knobs of configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// `AVEMINT_HEADER_READ_TIMEOUT` and `AVEMINT_KEEP_ALIVE_TIMEOUT` (see `crate::server`).
    pub connection_timeouts: crate::server::ConnectionTimeouts,
    /// `AVEMINT_DOCS`: serve `/docs` and `/openapi.json` or not.
    pub docs: Docs,
    /// `AVEMINT_TOKEN_ENDPOINT`: serve `POST /auth/token` or not.
    pub token_endpoint: TokenEndpoint,
    /// `AVEMINT_ALLOWED_ORIGINS`: other origins whose scripts may call `/auth/*` with credentials.
    pub allowed_origins: AllowedOrigins,
    /// `AVEMINT_TRUSTED_PROXIES`: peers whose `X-Forwarded-For` (or `Forwarded`) is believed.
    pub trusted_proxies: TrustedProxies,
    /// `AVEMINT_LOGIN_RATE_LIMIT`: sign-in requests per minute per client IP and endpoint.
    pub login_rate_limit: RateLimit,
}

/// Marks an answer whose `Content-Security-Policy` its handler decided (the SPA's page, `spa_host`): the guard
/// leaves it as it is, absent included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PagePolicy;

/// The policy of one running service.
pub(crate) struct Guard {
    own_origin: String,
    hsts: bool,
    settings: SecuritySettings,
    limiter: RateLimiter,
}

/// What the response phase needs to remember about the request.
pub(crate) struct Seen {
    pub path: String,
    pub origin: Option<String>,
    pub client: IpAddr,
}

impl Guard {
    pub(crate) fn new(public_url: &PublicUrl, settings: SecuritySettings) -> Arc<Self> {
        Arc::new(Self {
            own_origin: cors::normalise(public_url.as_str()).unwrap_or_else(|| public_url.as_str().to_owned()),
            hsts: public_url.is_https(),
            limiter: RateLimiter::new(settings.login_rate_limit),
            settings,
        })
    }

    /// The client's IP address (see `traffic::client_ip`).
    pub(crate) fn client_ip(&self, req: &Request) -> IpAddr {
        let peer = req
            .remote_addr()
            .as_socket_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let standard = req
            .headers()
            .get_all(header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok());
        self.settings.trusted_proxies.client_ip(peer, forwarded, standard)
    }

    /// Whether the request's peer is one of `AVEMINT_TRUSTED_PROXIES` (its trace context is then honoured).
    pub(crate) fn trusts_peer(&self, req: &Request) -> bool {
        req.remote_addr()
            .as_socket_addr()
            .is_some_and(|a| self.settings.trusted_proxies.contains(a.ip()))
    }

    /// Checks a request before routing; `Err` is the complete answer. `proxied` is the proxied route the request's
    /// path is in, from the request's one snapshot of the route table (the handler answers from the same one): such a
    /// request is guarded like the auth APIs, and its body is streamed by the proxy, not read here.
    pub(crate) async fn admit(
        &self,
        mut req: Request,
        proxied: Option<&RouteSettings>,
    ) -> (Seen, Result<Request, Response>) {
        let client = self.client_ip(&req);
        req.extensions_mut().insert(ClientIp(client));
        let seen = Seen {
            path: req.uri().path().to_owned(),
            origin: cors::origin(req.headers()).map(str::to_owned),
            client,
        };
        let verdict = self.check(req, &seen, proxied).await;
        (seen, verdict)
    }

    async fn check(&self, mut req: Request, seen: &Seen, route: Option<&RouteSettings>) -> Result<Request, Response> {
        let cookie_len = super::cookies::counted_len(super::cookies::cookie_headers(req.headers()));
        if cookie_len > MAX_COOKIE_HEADER + 2 {
            let body = invalid_request_body("the Cookie header is larger than 4 KiB");
            return Err(Refusal::HeaderFieldsTooLarge(body).into_response());
        }
        if req.uri().query().is_some_and(|q| q.len() > MAX_QUERY) {
            let body = invalid_request_body("the query string is longer than 8 KiB");
            return Err(Refusal::UriTooLong(body).into_response());
        }
        let proxied = route.is_some();
        if !proxied {
            check_body(&mut req, self.settings.connection_timeouts.header_read)
                .await
                .map_err(IntoResponse::into_response)?;
        }
        if cors::is_preflight(req.method(), req.headers()) {
            return Err(cors::preflight(&self.settings.allowed_origins, req.headers()));
        }
        // A public route (`auth = "none"`) is open to any origin for safe methods: no session, no bearer.
        let public_read = route.is_some_and(|r| r.auth == RouteAuth::None && super::proxy::is_safe(req.method()));
        let guarded = (proxied && !public_read) || is_auth_api(&seen.path);
        if guarded && !self.same_origin_or_allowed(req.headers(), seen.origin.as_deref()) {
            let refusal = Refusal::cross_origin(
                "cross-origin request refused: the origin is neither this service nor in AVEMINT_ALLOWED_ORIGINS",
            );
            return Err(refusal.into_response());
        }
        // Boxed for the reason `check_body` gives: only the sign-in paths are limited.
        if let Some(endpoint) = limited(&seen.path)
            && let Err(retry_after) = Box::pin(self.limiter.check(endpoint, seen.client)).await
        {
            tracing::warn!(client_ip = %seen.client, path = %seen.path, "sign-in rate limit reached");
            return Err(Refusal::rate_limited(retry_after.as_secs()).into_response());
        }
        Ok(req)
    }

    /// `Origin` (when sent) must be ours or listed; without it, `Sec-Fetch-Site`
    /// (when sent) must say the request came from our own origin or from the user.
    fn same_origin_or_allowed(&self, headers: &HeaderMap, origin: Option<&str>) -> bool {
        if let Some(origin) = origin {
            return cors::normalise(origin).is_some_and(|o| o == self.own_origin)
                || self.settings.allowed_origins.contains(origin);
        }
        match headers.get("sec-fetch-site").map(HeaderValue::to_str) {
            None => true,
            Some(Ok(site)) => matches!(site, "same-origin" | "none"),
            Some(Err(_)) => false,
        }
    }

    /// Adds the security and CORS headers to a response.
    pub(crate) fn finish(&self, resp: &mut Response, seen: &Seen) {
        let path = seen.path.as_str();
        let page_policy = resp.extensions().get::<PagePolicy>().is_some();
        let h = resp.headers_mut();
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        // Introspection answers describe a token: never cached by intermediaries (RFC 7662 §4); the token
        // service's carry one (RFC 6749 §5.1, also `Pragma: no-cache` for HTTP/1.0 caches).
        let token_service = path == Route::OAuthToken.path();
        if path.starts_with(Route::AUTH_PREFIX) || path == Route::Introspect.path() || token_service {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        if token_service {
            h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        }
        let is_html = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        if is_html {
            // The docs page brings its own, hash-based policy (see `docs`), the SPA's page its configured one
            // (`PagePolicy`); everything else gets the strict one.
            let own = (path.starts_with(Route::Docs.path()) && h.contains_key(header::CONTENT_SECURITY_POLICY))
                || page_policy;
            if !own {
                h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP_HTML));
            }
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        }
        if self.hsts {
            h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
        }
        if !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            cors::decorate(&self.settings.allowed_origins, seen.origin.as_deref(), h);
        }
    }
}

/// The per-client limit that counts a request for `path` (a trailing `/` makes no difference).
fn limited(path: &str) -> Option<Limited> {
    Route::of(path.trim_end_matches('/')).and_then(Route::limited)
}

/// Whether the origin check applies to `path`: the auth APIs of the route table, and any other path under
/// `/auth/` that is not a sign-in navigation, so an endpoint is guarded even before the table lists it.
fn is_auth_api(path: &str) -> bool {
    match Route::of(path.trim_end_matches('/')) {
        Some(route) => route.is_auth_api(),
        None => path.starts_with(Route::AUTH_PREFIX),
    }
}

/// Refuses bodies over `MAX_BODY`: by `Content-Length` before reading, or while reading a chunked body. A
/// body is read here, whole, within `read_timeout` (`AVEMINT_HEADER_READ_TIMEOUT`): a client dripping its body
/// (slow POST) is answered 400 and does not hold the connection for ever.
///
/// The read is boxed: its future (the timeout around poem's body reader) is kilobytes, most requests have no body,
/// and every request's future is moved as it starts, so an unboxed read would cost every request the copy.
async fn check_body(req: &mut Request, read_timeout: std::time::Duration) -> Result<(), Refusal> {
    let too_large = || Refusal::PayloadTooLarge(invalid_request_body("the request body is larger than 64 KiB"));
    match req
        .headers()
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().map(str::parse::<u64>))
    {
        Some(Ok(Ok(n))) if n > MAX_BODY as u64 => Err(too_large()),
        Some(Ok(Ok(0))) => Ok(()),
        Some(Ok(Ok(_))) => Box::pin(read_body(req, read_timeout, too_large)).await,
        Some(_) => Err(Refusal::BadRequest(invalid_request_body(
            "the Content-Length header is malformed",
        ))),
        None if req.method() == Method::GET || req.method() == Method::HEAD => Ok(()),
        None => Box::pin(read_body(req, read_timeout, too_large)).await,
    }
}

async fn read_body(
    req: &mut Request,
    read_timeout: std::time::Duration,
    too_large: impl Fn() -> Refusal,
) -> Result<(), Refusal> {
    let body = req.take_body();
    match tokio::time::timeout(read_timeout, body.into_bytes_limit(MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            req.set_body(bytes);
            Ok(())
        }
        Ok(Err(poem::error::ReadBodyError::PayloadTooLarge)) => Err(too_large()),
        Ok(Err(_)) => Err(Refusal::BadRequest(invalid_request_body(
            "the request body could not be read",
        ))),
        Err(_) => Err(Refusal::BadRequest(invalid_request_body(
            "the request body was not received in time",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(path: &str) -> Seen {
        Seen {
            path: path.into(),
            origin: None,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    #[test]
    fn hsts_only_for_https_public_urls() {
        let https = Guard::new(
            &PublicUrl::parse("https://app.example.com").expect("url"),
            SecuritySettings::default(),
        );
        let mut resp = Response::default();
        https.finish(&mut resp, &seen("/healthz"));
        assert_eq!(resp.headers()[header::STRICT_TRANSPORT_SECURITY], HSTS);
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(!resp.headers().contains_key(header::CACHE_CONTROL));
        let http = Guard::new(
            &PublicUrl::parse("http://127.0.0.1:8080").expect("url"),
            SecuritySettings::default(),
        );
        let mut resp = Response::default();
        http.finish(&mut resp, &seen("/auth/login"));
        assert!(!resp.headers().contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()[header::REFERRER_POLICY], "no-referrer");
    }

    #[test]
    fn html_gets_a_csp_that_forbids_framing() {
        let g = Guard::new(
            &PublicUrl::parse("https://app.example.com").expect("url"),
            SecuritySettings::default(),
        );
        for path in ["/", "/docs"] {
            let mut resp = Response::builder().content_type("text/html; charset=utf-8").finish();
            g.finish(&mut resp, &seen(path));
            let csp = resp.headers()[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(csp.contains("object-src 'none'"), "{path}: {csp}");
            assert_eq!(resp.headers()[header::X_FRAME_OPTIONS], "DENY");
        }
    }

    #[test]
    fn the_origin_check() {
        let g = Guard::new(
            &PublicUrl::parse("https://app.example.com").expect("url"),
            SecuritySettings {
                allowed_origins: AllowedOrigins::parse("https://spa.example.com").expect("origins"),
                ..SecuritySettings::default()
            },
        );
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            m
        };
        let ok = |pairs: &[(&'static str, &'static str)]| {
            let m = h(pairs);
            g.same_origin_or_allowed(&m, cors::origin(&m))
        };
        assert!(ok(&[]));
        assert!(ok(&[("origin", "https://app.example.com")]));
        assert!(ok(&[
            ("origin", "https://spa.example.com"),
            ("sec-fetch-site", "same-site")
        ]));
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("sec-fetch-site", "none")]));
        assert!(!ok(&[("origin", "https://evil.example")]));
        assert!(!ok(&[("origin", "null")]));
        assert!(!ok(&[("origin", "https://app.example.com.evil.example")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(is_auth_api("/auth/token") && is_auth_api("/auth/session") && is_auth_api("/auth/logout"));
        assert!(!is_auth_api("/auth/login") && !is_auth_api("/auth/callback") && !is_auth_api("/healthz"));
        // Unlisted paths under `/auth/` are guarded too; a trailing `/` does not make a navigation an API.
        assert!(is_auth_api("/auth/other") && is_auth_api("/auth/token/") && !is_auth_api("/auth/login/"));
        assert_eq!(limited("/auth/callback/"), Some(Limited::Callback));
        assert_eq!(limited("/auth/token"), None);
    }
}
