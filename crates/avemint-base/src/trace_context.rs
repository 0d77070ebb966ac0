//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: written on the calls
//! avemint makes (Ave, the claims hook, proxy upstreams) so their spans join the request's trace,
//! and read from an incoming request when its sender is trusted (see `http::request_id`).
//!
//! The context is that of the current `tracing` span as the OpenTelemetry layer of `telemetry` sees
//! it. Without span export (no `OTEL_EXPORTER_OTLP_*ENDPOINT`) there is no valid context, and
//! nothing is written or read: the headers a proxied request brings pass on unchanged.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

struct ReadHeaders<'a>(&'a HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the current span's trace context into `headers` (replacing any `traceparent` and
/// `tracestate` already there); leaves them alone when spans are not exported.
pub fn inject(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    headers.remove(TRACEPARENT);
    headers.remove(TRACESTATE);
    TraceContextPropagator::new().inject_context(&cx, &mut Headers(headers));
}

/// The current span's trace context as `traceparent` (and `tracestate`) headers, for a request
/// builder.
pub fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    inject(&mut h);
    h
}

/// Makes the trace context `headers` carry (if any, and valid) the parent of `span`.
pub fn adopt(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key(TRACEPARENT) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&ReadHeaders(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}
