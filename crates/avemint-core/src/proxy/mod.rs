//! Proxy mode: API calls from the browser forwarded to upstream APIs with an
//! app JWT attached on the server, so no token ever reaches the browser.
//!
//! Why a use case of its own: which route a path belongs to, what the
//! upstream receives (the path with the prefix replaced, the query as sent,
//! the body streamed and bounded, the headers of `headers`, the bearer of
//! `bearer`), and how an upstream failure is classified are policy that needs
//! no HTTP server type. The HTTP adapter (`http::proxy`) checks CSRF, reads
//! the session, renews it like `/auth/token`, and turns the outcome into an
//! answer; upstream calls go through hyper's client (`upstream`).

pub mod access;
pub(crate) mod bearer;
pub mod headers;
pub mod readings;
pub mod settings;
pub mod upstream;
pub mod websocket;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use http::header::{self, HeaderMap};
use http::{Method, Uri};
use tokio::time::Instant;

pub use access::{RequiredClaims, RouteAuth};
pub use settings::{RouteSettings, RouteSpec, Routes};
pub use websocket::WebSocketLimits;

pub use avemint_base::metrics::{InFlightStream, ProxyRouteMetrics};
use avemint_base::web_url::PublicUrl;

/// A request body as it arrives.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Why a request was not forwarded, or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The body is over the route's `max_request_bytes` (by `Content-Length`, or while streaming).
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request could not be turned into an upstream request (a header or URL avemint cannot send).
    #[error("the request cannot be forwarded")]
    Unforwardable,
    /// The browser's body failed while it was being forwarded (bad chunked framing, a connection cut mid-body):
    /// the client's fault, not the upstream's.
    #[error("the request body is malformed or incomplete")]
    BadBody,
    /// No connection, or the connection failed before an answer.
    #[error("the upstream API cannot be reached")]
    Unreachable,
    /// No answer (status and headers) within the route's `timeout_ms`.
    #[error("the upstream API did not answer within {ms} ms")]
    Timeout { ms: u128 },
}

/// An upstream's answer, once its status and headers arrived.
pub struct Answer {
    pub response: upstream::UpstreamResponse,
    /// When the whole answer must have arrived, unless it is a stream (see [`Answer::body`]).
    pub deadline: Instant,
}

impl Answer {
    /// Whether the answer is a stream, exempt from the whole-response bound: server-sent events
    /// (`text/event-stream`), or a body without `Content-Length` sent chunked (HTTP/1.1) or over HTTP/2 (which has
    /// no chunked encoding): a download generated as it goes. A WebSocket is never an `Answer` body.
    pub(crate) fn is_stream(&self) -> bool {
        let headers = self.response.headers();
        let event_stream = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let framed_as_it_goes = chunked || self.response.version() >= http::Version::HTTP_2;
        event_stream || (!headers.contains_key(header::CONTENT_LENGTH) && framed_as_it_goes)
    }

    /// The body as it arrives, counted in flight by `counted` until it ends or is dropped. It fails (and so the
    /// connection to the browser is cut, never passed off as complete) when `session_ended` resolves (see
    /// [`session_ended`]), and, unless it is a stream, when it has not arrived whole by the deadline.
    pub fn body(
        self,
        counted: InFlightStream,
        session_ended: impl Future<Output = ()> + Send + 'static,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
        let deadline = (!self.is_stream()).then_some(self.deadline);
        let body = upstream::data(self.response.into_body());
        let ended: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(session_ended);
        futures_util::stream::unfold(Some((Box::pin(body), ended, counted)), move |state| async move {
            let (mut body, mut ended, counted) = state?;
            let whole_by = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                next = body.next() => next,
                () = whole_by => Some(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the answer did not arrive whole within timeout_ms",
                ))),
                () = &mut ended => Some(Err(io::Error::other("the session ended"))),
            };
            match next {
                Some(Ok(chunk)) => Some((Ok(chunk), Some((body, ended, counted)))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
    }
}

/// How often the session of a long-lived proxied answer (a streamed body, a WebSocket) is checked: once it has
/// ended, the answer ends within this (plus, for a session ended on another instance, the session cache's lifetime).
pub(crate) const SESSION_CHECK: Duration = Duration::from_secs(5);

/// Resolves once `alive`, asked every [`SESSION_CHECK`] (the first time one interval from now), says the session
/// has ended: the one way every long-lived proxied answer learns of its session's end.
pub async fn session_ended<F, Fut>(mut alive: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut check = tokio::time::interval_at(Instant::now() + SESSION_CHECK, SESSION_CHECK);
    loop {
        check.tick().await;
        if !alive().await {
            return;
        }
    }
}

/// The upstream HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the proxy's HTTP client could not be built")]
pub struct ClientError;

/// A browser request on its way upstream.
pub struct Outgoing<'a> {
    pub method: Method,
    /// The path below the route's prefix (checked with `settings::check_rest`).
    pub rest: &'a str,
    pub query: Option<&'a str>,
    /// The browser's headers without avemint's cookies.
    pub headers: HeaderMap,
    /// avemint's id of the request, sent upstream as `X-Request-Id`.
    pub request_id: Option<&'a str>,
    pub body: BodyStream,
    /// Whether a body may follow the headers: false for an HTTP/1.x request with neither `Content-Length` nor
    /// `Transfer-Encoding` (it has none, RFC 9112 §6.3), which then goes upstream without one.
    pub body_may_follow: bool,
}

/// The routes in use with their metrics: replaced whole when the configuration is reloaded.
pub struct RouteTable {
    routes: Routes,
    /// Per route, in the order of `routes`.
    metrics: Vec<ProxyRouteMetrics>,
}

impl RouteTable {
    /// `routes` with the metrics of each (created on first use of a route's `path`, kept across reloads).
    pub fn new(routes: Routes) -> Self {
        let metrics = routes
            .all()
            .iter()
            .map(|r| avemint_base::metrics::proxy_route(&r.path))
            .collect();
        Self { routes, metrics }
    }

    /// The configured routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The route `path` belongs to, with its metrics.
    pub fn find(&self, path: &str) -> Option<(&RouteSettings, &ProxyRouteMetrics)> {
        let i = self.routes.all().iter().position(|r| r.rest(path).is_some())?;
        Some((self.routes.all().get(i)?, self.metrics.get(i)?))
    }
}

/// The route table in use, shared by the proxy and the HTTP layer's guard: each request reads one snapshot
/// ([`LiveRoutes::current`]); a configuration reload puts a new table in ([`LiveRoutes::replace`]).
#[derive(Clone)]
pub struct LiveRoutes(Arc<RwLock<Arc<RouteTable>>>);

impl LiveRoutes {
    /// `routes` in use.
    pub fn new(routes: Routes) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(RouteTable::new(routes)))))
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<RouteTable> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `routes` in use from the next request on; requests already running finish on the table they started
    /// with.
    pub fn replace(&self, routes: Routes) {
        let table = Arc::new(RouteTable::new(routes));
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = table;
    }
}

/// The routes, the upstream client and the bearer cache of one running service.
pub struct Proxy {
    routes: LiveRoutes,
    client: upstream::Upstream,
    /// WebSocket handshakes: HTTP/1.1 only (an upgrade does not exist in HTTP/2).
    handshakes: upstream::Upstream,
    bearers: bearer::Bearers,
    /// The WebSockets open, within `AVEMINT_MAX_WEBSOCKETS_PER_SESSION` and `AVEMINT_MAX_WEBSOCKETS`.
    sockets: websocket::OpenSockets,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`: avemint's public origin.
    proto: String,
    host: String,
}

impl Proxy {
    /// Proxy mode over `routes`: one upstream client, the bearer cache and the WebSocket limits.
    pub fn new(
        routes: Routes,
        websockets: websocket::WebSocketLimits,
        public_url: &PublicUrl,
    ) -> Result<Self, ClientError> {
        let client = upstream::Upstream::new(upstream::Versions::Any)?;
        let handshakes = upstream::Upstream::new(upstream::Versions::Http1)?;
        let url = url::Url::parse(public_url.as_str()).map_err(|_| ClientError)?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(ClientError),
        };
        Ok(Self {
            routes: LiveRoutes::new(routes),
            client,
            handshakes,
            bearers: bearer::Bearers::default(),
            sockets: websocket::OpenSockets::new(websockets),
            proto: url.scheme().to_owned(),
            host,
        })
    }

    /// The routes in use (see [`LiveRoutes`]).
    pub fn routes(&self) -> &LiveRoutes {
        &self.routes
    }

    /// The per-session cache of the app JWTs attached upstream.
    pub fn bearers(&self) -> &bearer::Bearers {
        &self.bearers
    }

    /// The WebSockets open on this instance.
    pub fn sockets(&self) -> &websocket::OpenSockets {
        &self.sockets
    }

    /// Sends `out` to `route`'s upstream with `bearer` (none: without `Authorization`); the answer once its status
    /// and headers arrived (the body
    /// streams on). A WebSocket handshake (`websocket::is_handshake`) goes upstream as one, over HTTP/1.1; its
    /// `101` answer can then be upgraded (`hyper::upgrade::on`).
    #[tracing::instrument(
        name = "proxy.upstream",
        skip_all,
        fields(route = route.path.as_str(), otel.kind = "client", http.status_code = tracing::field::Empty)
    )]
    pub async fn forward(
        &self,
        route: &RouteSettings,
        metrics: &ProxyRouteMetrics,
        out: Outgoing<'_>,
        bearer: Option<&str>,
        client: std::net::IpAddr,
    ) -> Result<Answer, ForwardError> {
        let started = Instant::now();
        let handshake =
            websocket::is_handshake(&out.method, &out.headers).then(|| websocket::handshake_headers(&out.headers));
        let limit = route.max_request_bytes;
        let declared = out
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ForwardError::TooLarge { limit });
        }
        let url = route
            .target(out.rest, out.query)
            .map_err(|_| ForwardError::Unforwardable)?;
        let uri = Uri::try_from(url.as_str()).map_err(|_| ForwardError::Unforwardable)?;
        let via = headers::ForwardedFor {
            client,
            proto: &self.proto,
            host: &self.host,
            request_id: out.request_id,
        };
        let mut headers = headers::upstream(out.headers, bearer, &via).map_err(|_| ForwardError::Unforwardable)?;
        avemint_base::trace_context::inject(&mut headers);
        let fault = Arc::new(AtomicU8::new(BodyFault::NONE));
        let (client, body) = match handshake {
            Some(handshake) => {
                websocket::upgrade_request(&mut headers, handshake);
                (&self.handshakes, upstream::empty())
            }
            // Nothing to stream: no body is polled and none is framed (as the browser sent none).
            None if declared == Some(0) || (declared.is_none() && !out.body_may_follow) => {
                (&self.client, upstream::empty())
            }
            None => (
                &self.client,
                upstream::streamed(bounded(out.body, limit, fault.clone())),
            ),
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = out.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let send = client.send(request);
        let deadline = started + route.timeout;
        match tokio::time::timeout_at(deadline, send).await {
            Ok(Ok(response)) => {
                tracing::Span::current().record("http.status_code", response.status().as_u16());
                metrics.upstream_latency(started.elapsed());
                Ok(Answer { response, deadline })
            }
            Ok(Err(e)) => match fault.load(Ordering::Acquire) {
                BodyFault::TOO_LARGE => Err(ForwardError::TooLarge { limit }),
                BodyFault::CLIENT => {
                    tracing::debug!(route = %route.path, "the browser's request body failed while it was forwarded");
                    Err(ForwardError::BadBody)
                }
                _ => {
                    tracing::warn!(route = %route.path, error = %cause(e, &route.upstream), "upstream request failed");
                    Err(ForwardError::Unreachable)
                }
            },
            Err(_) => Err(ForwardError::Timeout {
                ms: route.timeout.as_millis(),
            }),
        }
    }
}

/// What went wrong with an upstream call, for the log: the innermost cause in the error's source chain
/// (`connection refused`, `dns error: …`, `invalid peer certificate: …`) and the upstream's host and port, never
/// its path or query.
fn cause(e: upstream::SendError, upstream: &url::Url) -> String {
    let mut innermost: &(dyn std::error::Error + 'static) = &e;
    let mut io_kind = None;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        innermost = err;
        next = err.source();
    }
    let what = match io_kind {
        Some(io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
        Some(io::ErrorKind::ConnectionReset) => "connection reset".to_owned(),
        Some(io::ErrorKind::ConnectionAborted) => "connection aborted".to_owned(),
        Some(io::ErrorKind::TimedOut) => "connection timed out".to_owned(),
        _ => innermost.to_string(),
    };
    let host = upstream.host_str().unwrap_or_default();
    match upstream.port_or_known_default() {
        Some(port) => format!("{what} to {host}:{port}"),
        None => format!("{what} to {host}"),
    }
}

/// What went wrong with a forwarded request body, if anything (an `AtomicU8` shared with [`bounded`]).
struct BodyFault;

impl BodyFault {
    const NONE: u8 = 0;
    /// Over `max_request_bytes`.
    const TOO_LARGE: u8 = 1;
    /// The browser's body stream failed.
    const CLIENT: u8 = 2;
}

/// `body`, failing once more than `limit` bytes have passed, and saying in `fault` why it failed (too large, or
/// the browser's stream failed).
fn bounded(body: BodyStream, limit: u64, fault: Arc<AtomicU8>) -> impl Stream<Item = Result<Bytes, io::Error>> {
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk.inspect_err(|_| fault.store(BodyFault::CLIENT, Ordering::Release))?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            fault.store(BodyFault::TOO_LARGE, Ordering::Release);
            return Err(io::Error::other("request body over max_request_bytes"));
        }
        Ok(chunk)
    })
}
