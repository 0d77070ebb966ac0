//! CORS (Fetch standard) and `AVEMINT_ALLOWED_ORIGINS`.
//!
//! Default deny: with no allow-list, no response carries an
//! `Access-Control-Allow-*` header, so browsers keep every response from
//! other origins' scripts. A listed origin gets its own origin echoed back
//! with `Access-Control-Allow-Credentials: true` (never `*`, which browsers
//! refuse with credentials and which would allow everyone), and `Vary: Origin`
//! so caches keep answers apart. Preflights are answered here, before routing.

use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::{IntoResponse, Response};

use super::errors::Refusal;

/// Methods the API uses (`DELETE /auth/sessions/{id}` included; `HEAD` is answered as `GET`): a preflight asking
/// for one of them is allowed.
const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "DELETE"];
/// `METHODS` as `Access-Control-Allow-Methods` lists them.
pub(crate) const ALLOW_METHODS: &str = "GET, HEAD, POST, DELETE";
/// Request headers a browser may send cross-origin.
pub(crate) const ALLOW_HEADERS: &str = "X-CSRF, Content-Type";
/// How long a browser may cache a preflight answer, seconds.
pub(crate) const MAX_AGE_SECS: &str = "600";

/// Origins, besides avemint's own, whose scripts may call `/auth/*` with credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<String>);

impl AllowedOrigins {
    /// Parses a comma-separated list of origins (`https://app.example.com`,
    /// `http://localhost:5173`). `*`, paths, queries and user-info are refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(parse_origin(part)?);
        }
        Ok(Self(out))
    }

    /// True when `origin` (as a browser serialises it) is listed.
    pub(crate) fn contains(&self, origin: &str) -> bool {
        normalise(origin).is_some_and(|o| self.0.contains(&o))
    }
}

fn parse_origin(raw: &str) -> Result<String, String> {
    if raw == "*" || raw.contains('*') {
        return Err("`*` is not allowed: list each origin (credentials are never shared with everyone)".into());
    }
    let url = url::Url::parse(raw).map_err(|_| format!("`{raw}` is not an origin such as https://app.example.com"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(format!("`{raw}` must be an http(s) origin"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{raw}` must be an origin only: scheme, host and port, no path"
        ));
    }
    if url.scheme() == "http" && !avemint_base::web_url::is_loopback(&url) {
        return Err(format!(
            "`{raw}` must use https (http is accepted only for loopback hosts)"
        ));
    }
    Ok(url.origin().ascii_serialization())
}

/// An `Origin` header value in canonical form; `None` for `null` and garbage.
pub(crate) fn normalise(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin.trim()).ok()?;
    if url.path() != "/" && !url.path().is_empty() {
        return None;
    }
    match url.origin() {
        o @ url::Origin::Tuple(..) => Some(o.ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The request's `Origin`, if it sent exactly one.
pub(crate) fn origin(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::ORIGIN).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return Some("null");
    }
    Some(first.to_str().unwrap_or("null"))
}

/// True for a CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`).
pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a preflight: 204 with the allowed methods and headers for a listed
/// origin asking for a method the API uses; otherwise 403 with no CORS headers
/// (the browser then refuses the real request).
pub(crate) fn preflight(allowed: &AllowedOrigins, headers: &HeaderMap) -> Response {
    let origin = origin(headers).filter(|o| allowed.contains(o));
    let method_ok = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| METHODS.contains(&m));
    let mut resp = match (origin, method_ok) {
        (Some(origin), true) => {
            let mut resp = StatusCode::NO_CONTENT.into_response();
            allow(resp.headers_mut(), origin);
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECS));
            resp
        }
        _ => Refusal::cross_origin("cross-origin request refused: the origin is not allowed or the method is not used")
            .into_response(),
    };
    resp.headers_mut()
        .append(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Adds CORS headers to an actual response for a listed origin; `Vary: Origin` always.
pub(crate) fn decorate(allowed: &AllowedOrigins, request_origin: Option<&str>, headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = request_origin.filter(|o| allowed.contains(o)) {
        allow(headers, origin);
    }
}

fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Some(v) = normalise(origin).and_then(|o| HeaderValue::from_str(&o).ok()) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_strictly() {
        let a = AllowedOrigins::parse("https://app.example.com, http://localhost:5173").expect("valid");
        assert!(a.contains("https://app.example.com"));
        assert!(a.contains("https://APP.example.com:443"));
        assert!(a.contains("http://localhost:5173"));
        assert!(!a.contains("http://localhost:5174"));
        assert!(!a.contains("https://app.example.com.evil.example"));
        assert!(!a.contains("null"));
        for bad in [
            "*",
            "https://*.example.com",
            "https://app.example.com/path",
            "http://app.example.com",
            "ftp://x",
            "https://u@x.example",
            "nope",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(AllowedOrigins::parse("").expect("empty"), AllowedOrigins::default());
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_allowed_methods_header_lists_every_method_a_preflight_accepts() {
        assert_eq!(ALLOW_METHODS, METHODS.join(", "));
    }

    #[test]
    fn preflight_answers() {
        let a = AllowedOrigins::parse("https://app.example.com").expect("valid");
        let ok = preflight(
            &a,
            &headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-csrf,content-type"),
            ]),
        );
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let h = ok.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], ALLOW_HEADERS);
        let denied = preflight(
            &a,
            &headers(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ]),
        );
        assert_eq!(denied.status(), StatusCode::FORBIDDEN);
        assert!(!denied.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        let method = |m: &'static str| {
            preflight(
                &a,
                &headers(&[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", m),
                ]),
            )
            .status()
        };
        assert_eq!(method("DELETE"), StatusCode::NO_CONTENT, "DELETE /auth/sessions/{{id}}");
        assert_eq!(method("PUT"), StatusCode::FORBIDDEN, "a method the API does not have");
        let two = headers(&[
            ("origin", "https://app.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(origin(&two), Some("null"));
    }
}
