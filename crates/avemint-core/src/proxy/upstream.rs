//! The upstream client of proxy mode: hyper's pooled client (`hyper-util`) over rustls, called directly.
//!
//! Why not reqwest, which the Ave client uses: on the proxy's hot path every request paid for reqwest's layers
//! (its URL type parsed again into a URI, its redirect and retry services even with redirects off, its request,
//! body and response wrappers), more than for the proxying itself (`bench/profile.sh proxy`, BENCHMARKS.md). Here
//! the request avemint built is sent as it is, on the same kind of connection pool reqwest keeps underneath,
//! with the same TLS set-up: the platform's roots through `rustls-platform-verifier`, aws-lc-rs unless the
//! process installed another rustls provider, ALPN `h2` and `http/1.1` (`http/1.1` only for WebSocket
//! handshakes, since an upgrade does not exist in HTTP/2). Redirects are never followed: the browser gets them.
//! Connections go straight to the upstream: `HTTP_PROXY`/`HTTPS_PROXY`, which reqwest honours for the calls to
//! Ave, do not apply here, where a forward proxy would see every app JWT attached.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::ClientError;

/// A request body on its way upstream.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, io::Error>;

/// An upstream's answer: its status and headers, the body still arriving.
pub type UpstreamResponse = http::Response<Incoming>;

/// Why an upstream call failed (no answer).
pub(crate) type SendError = hyper_util::client::legacy::Error;

/// One pooled client, for plain requests or for WebSocket handshakes.
pub(crate) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

/// Which HTTP versions a client offers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Versions {
    /// HTTP/2 where the upstream offers it by ALPN, else HTTP/1.1.
    Any,
    /// HTTP/1.1 only (WebSocket handshakes).
    Http1,
}

impl Upstream {
    /// A client over `http://` and `https://` upstreams.
    pub(crate) fn new(versions: Versions) -> Result<Self, ClientError> {
        use rustls_platform_verifier::BuilderVerifierExt as _;
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|_| ClientError)?
            .with_platform_verifier()
            .map_err(|_| ClientError)?
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        // The scheme is checked by the connector below (`https_or_http`), not by this one.
        http.enforce_http(false);
        http.set_nodelay(true);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1();
        let connector = match versions {
            Versions::Any => builder.enable_http2().wrap_connector(http),
            Versions::Http1 => builder.wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client })
    }

    /// Sends `req`; the answer once its status and headers arrived.
    pub(crate) async fn send(&self, req: http::Request<UpstreamBody>) -> Result<UpstreamResponse, SendError> {
        self.client.request(req).await
    }
}

/// No body (nothing is polled, no framing is sent).
pub(crate) fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body streamed from `chunks`.
pub(crate) fn streamed(chunks: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static) -> UpstreamBody {
    StreamBody::new(chunks.map_ok(Frame::data)).boxed_unsync()
}

/// The data of an upstream's answer as it arrives (trailers are not passed on).
pub(crate) fn data(body: Incoming) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
    body.into_data_stream().map_err(io::Error::other)
}
