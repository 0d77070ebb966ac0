//! Proxy mode: API calls from the browser forwarded to upstream APIs with an
//! app JWT attached on the server, so no token ever reaches the browser.
//!
//! Why a use case of its own: which route a path belongs to, what the
//! upstream receives (the path with the prefix replaced, the query as sent,
//! the body streamed and bounded, the headers of `headers`, the bearer of
//! `bearer`), and how an upstream failure is classified are policy that needs
//! no HTTP server type. The HTTP adapter (`http::proxy`) checks CSRF, reads
//! the session, renews it like `/auth/token`, and turns the outcome into an
//! answer; upstream calls go through reqwest.

pub(crate) mod bearer;
pub(crate) mod headers;
pub(crate) mod settings;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use reqwest::Method;
use reqwest::header::HeaderMap;

pub use settings::{RouteSettings, RouteSpec, Routes};

use crate::web_url::PublicUrl;

/// A request body as it arrives.
pub(crate) type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// Why a request was not forwarded, or got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The body is over the route's `max_request_bytes` (by `Content-Length`, or while streaming).
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The request could not be turned into an upstream request (a header or URL avemint cannot send).
    #[error("the request cannot be forwarded")]
    Unforwardable,
    /// No connection, or the connection failed before an answer.
    #[error("the upstream API cannot be reached")]
    Unreachable,
    /// No answer (status and headers) within the route's `timeout_ms`.
    #[error("the upstream API did not answer within {ms} ms")]
    Timeout { ms: u128 },
}

/// The upstream HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the proxy's HTTP client could not be built")]
pub struct ClientError;

/// A browser request on its way upstream.
pub(crate) struct Outgoing<'a> {
    pub method: Method,
    /// The path below the route's prefix (checked with `settings::safe_rest`).
    pub rest: &'a str,
    pub query: Option<&'a str>,
    /// The browser's headers without avemint's cookies.
    pub headers: HeaderMap,
    pub body: BodyStream,
}

/// The routes, the upstream client and the bearer cache of one running service.
pub(crate) struct Proxy {
    routes: Routes,
    client: reqwest::Client,
    bearers: bearer::Bearers,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`: avemint's public origin.
    proto: String,
    host: String,
}

impl Proxy {
    pub(crate) fn new(routes: Routes, public_url: &PublicUrl) -> Result<Self, ClientError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|_| ClientError)?;
        let url = url::Url::parse(public_url.as_str()).map_err(|_| ClientError)?;
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            (None, _) => return Err(ClientError),
        };
        Ok(Self {
            routes,
            client,
            bearers: bearer::Bearers::default(),
            proto: url.scheme().to_owned(),
            host,
        })
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    pub(crate) fn bearers(&self) -> &bearer::Bearers {
        &self.bearers
    }

    /// Sends `out` to `route`'s upstream with `bearer`; the answer once its status and headers arrived (the body
    /// streams on).
    #[tracing::instrument(
        name = "proxy.upstream",
        skip_all,
        fields(route = route.path.as_str(), otel.kind = "client", http.status_code = tracing::field::Empty)
    )]
    pub(crate) async fn forward(
        &self,
        route: &RouteSettings,
        out: Outgoing<'_>,
        bearer: &str,
        client: std::net::IpAddr,
    ) -> Result<reqwest::Response, ForwardError> {
        let limit = route.max_request_bytes;
        let declared = out
            .headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(ForwardError::TooLarge { limit });
        }
        let url = route
            .target(out.rest, out.query)
            .map_err(|_| ForwardError::Unforwardable)?;
        let via = headers::ForwardedFor {
            client,
            proto: &self.proto,
            host: &self.host,
        };
        let mut headers = headers::upstream(out.headers, bearer, &via).map_err(|_| ForwardError::Unforwardable)?;
        crate::trace_context::inject(&mut headers);
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = reqwest::Body::wrap_stream(bounded(out.body, limit, exceeded.clone()));
        let send = self.client.request(out.method, url).headers(headers).body(body).send();
        match tokio::time::timeout(route.timeout, send).await {
            Ok(Ok(resp)) => {
                tracing::Span::current().record("http.status_code", resp.status().as_u16());
                Ok(resp)
            }
            Ok(Err(_)) if exceeded.load(Ordering::Acquire) => Err(ForwardError::TooLarge { limit }),
            Ok(Err(e)) => {
                // Without the URL: its query may carry values the access log leaves out too.
                tracing::warn!(route = %route.path, error = %e.without_url(), "upstream request failed");
                Err(ForwardError::Unreachable)
            }
            Err(_) => Err(ForwardError::Timeout {
                ms: route.timeout.as_millis(),
            }),
        }
    }
}

/// `body`, failing once more than `limit` bytes have passed (and saying so in `exceeded`).
fn bounded(body: BodyStream, limit: u64, exceeded: Arc<AtomicBool>) -> impl Stream<Item = Result<Bytes, io::Error>> {
    let mut seen: u64 = 0;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            exceeded.store(true, Ordering::Release);
            return Err(io::Error::other("request body over max_request_bytes"));
        }
        Ok(chunk)
    })
}
