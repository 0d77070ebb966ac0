//! Request ids and the request span: every request gets an id (the client's `X-Request-Id` when it
//! is printable ASCII of at most 128 characters, else 128 random bits in hex), answered in
//! `X-Request-Id`, and a `tracing` span carrying it. Everything the request does runs inside that
//! span (its renewal task too, see `session::renew`), so each log line of the request names the id,
//! and exported traces have one span per request with its steps below.
//!
//! An incoming `traceparent` is honoured as the parent only when the peer is one of
//! `AVEMINT_TRUSTED_PROXIES` (the same trust `X-Forwarded-For` gets): a browser could otherwise pick
//! trace ids and force sampling.

use poem::http::{HeaderMap, HeaderValue};

use avemint_base::route::Route;

/// The request id header, in both directions.
pub(crate) const HEADER: &str = "x-request-id";
/// The longest client-sent id kept.
const MAX_LEN: usize = 128;

/// A request id: printable ASCII, 1 to 128 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestId(String);

impl RequestId {
    /// The client's id when it is acceptable, else a new one.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        headers
            .get(HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
            .unwrap_or_else(Self::generate)
    }

    /// Printable ASCII (no spaces or controls), at most 128 characters.
    fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty() && raw.len() <= MAX_LEN && raw.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(raw.to_owned()))
    }

    /// 128 random bits, hex.
    fn generate() -> Self {
        let mut bytes = [0u8; 16];
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            // The system's random source failed: a unique-enough id from the clock and a counter.
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes[..8].copy_from_slice(&t.to_be_bytes());
            bytes[8..].copy_from_slice(&n.to_be_bytes());
        }
        Self(hex::encode(bytes))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The header value of the answer.
    pub(crate) fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

/// The `route` of a request's span: avemint's own route's path template, a proxied route's prefix, or
/// `unmatched`.
pub(crate) fn route_label(route: Option<Route>, proxied: Option<&str>) -> &str {
    proxied.unwrap_or_else(|| route.map_or("unmatched", Route::path))
}

/// The span of one request, `route` from [`route_label`]. At `ERROR` level so that no log filter drops it: it
/// carries the request id onto every line written inside it, whatever level those lines are. `status` is
/// recorded at the end.
pub(crate) fn span(id: &RequestId, method: &poem::http::Method, route: &str) -> tracing::Span {
    tracing::error_span!(
        target: "avemint::http",
        "request",
        request_id = id.as_str(),
        method = %method,
        route,
        status = tracing::field::Empty,
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_str(value).expect("header"));
        h
    }

    #[test]
    fn a_good_client_id_is_kept_and_anything_else_replaced() {
        assert_eq!(RequestId::of(&with("abc-123_X:y")).as_str(), "abc-123_X:y");
        let long = "a".repeat(128);
        assert_eq!(RequestId::of(&with(&long)).as_str(), long);
        for bad in ["", "has space", &"a".repeat(129), "tab\there"] {
            let id = RequestId::of(&with(bad));
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 32, "{bad:?} replaced by a new id");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let mut h = HeaderMap::new();
        h.insert(HEADER, HeaderValue::from_bytes(b"caf\xc3\xa9").expect("header"));
        assert_eq!(RequestId::of(&h).as_str().len(), 32, "non-ASCII replaced");
        assert_ne!(RequestId::of(&HeaderMap::new()), RequestId::of(&HeaderMap::new()));
    }
}
