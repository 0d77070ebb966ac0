//! The proxied routes (`[[routes]]` in the file, `AVEMINT_ROUTES` as a JSON
//! array): their shape as configured ([`RouteSpec`]), and the validated set
//! ([`Routes`]) with every problem reported at once.
//!
//! Why here and not in `config`: the rules (prefixes that overlap neither
//! each other nor avemint's own paths, the upstream URL rule, the bounds) are
//! the proxy's; `config` only reads the sources and hands the specs over.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::websocket;
use crate::route::{Route, overlaps};
use crate::web_url::{PlainHttp, parse_web_url_with};

/// Default `timeout_ms`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Largest `timeout_ms` (an hour).
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Default `max_request_bytes` (10 MiB).
pub(crate) const DEFAULT_MAX_REQUEST_BYTES: u64 = 10 * 1024 * 1024;
/// Largest `max_message_bytes` (64 MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// One route as written in the file or in `AVEMINT_ROUTES` (unknown keys refused).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub path: String,
    pub upstream: String,
    pub profile: Option<String>,
    pub methods: Option<Vec<String>>,
    pub timeout_ms: Option<u64>,
    pub max_request_bytes: Option<u64>,
    pub max_message_bytes: Option<u64>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub strip_cookies: bool,
}

/// One validated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// The prefix on avemint's origin: it and every path below it are forwarded.
    pub path: String,
    /// The upstream URL the prefix is replaced by.
    pub upstream: Url,
    /// The token profile whose app JWT the upstream gets; `None`: the default profile.
    pub profile: Option<String>,
    /// The methods forwarded; `None`: all.
    pub methods: Option<Vec<Method>>,
    /// How long the upstream may take to answer (its status and headers).
    pub timeout: Duration,
    /// Larger request bodies are refused (413).
    pub max_request_bytes: u64,
    /// A larger WebSocket message or frame, from either side, closes the socket with `1009`.
    pub max_message_bytes: usize,
    /// Plain `http` to a host that is not loopback was allowed explicitly.
    pub allow_http: bool,
    /// No cookie at all reaches the upstream (avemint's own never do).
    pub strip_cookies: bool,
}

impl RouteSettings {
    /// Whether `method` is forwarded.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// The part of `path` below the prefix (`""` or starting with `/`), when `path` is this route's.
    pub(crate) fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.path.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The upstream URL of a request whose path below the prefix is `rest` (checked by [`safe_rest`]), with the
    /// query as sent.
    pub(crate) fn target(&self, rest: &str, query: Option<&str>) -> Result<Url, url::ParseError> {
        let base = self.upstream.as_str().trim_end_matches('/');
        let mut target = format!("{base}{rest}");
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        Url::parse(&target)
    }
}

/// Whether the part of a path below a route's prefix can be forwarded as is: no dot segment (`.`, `..`, also
/// percent-encoded) and no encoded slash or backslash, so a request can never reach an upstream path outside the
/// route's upstream path, whatever the upstream normalises.
pub(crate) fn safe_rest(rest: &str) -> bool {
    let lower = rest.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains('\\') {
        return false;
    }
    lower
        .split('/')
        .map(|segment| segment.replace("%2e", "."))
        .all(|segment| segment != "." && segment != "..")
}

/// The validated routes; at most one matches any path (prefixes do not overlap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes(Arc<[RouteSettings]>);

impl Routes {
    /// Validates `specs`; `profiles` are the configured token profile names (`None`: unknown, so not checked).
    /// Every problem is one line, `route `PATH`: …`.
    pub(crate) fn build(specs: Vec<RouteSpec>, profiles: Option<&[&str]>) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut routes: Vec<RouteSettings> = Vec::with_capacity(specs.len());
        for spec in specs {
            let origin = format!("route `{}`", spec.path);
            let mut problem = |what: String| errors.push(format!("{origin}: {what}"));
            if let Err(e) = check_prefix(&spec.path) {
                problem(e);
            } else if let Some(own) = Route::own_path_overlapping(&spec.path) {
                problem(format!("`path` overlaps avemint's own path {own}"));
            } else if let Some(other) = routes.iter().find(|r| overlaps(&r.path, &spec.path)) {
                problem(format!("`path` overlaps the route `{}`", other.path));
            }
            let plain_http = if spec.allow_http {
                PlainHttp::Allowed
            } else {
                PlainHttp::LoopbackOnly
            };
            let upstream = parse_web_url_with(&spec.upstream, plain_http)
                .map_err(|e| problem(format!("`upstream` {e}")))
                .ok();
            if let (Some(profile), Some(names)) = (&spec.profile, profiles)
                && !names.contains(&profile.as_str())
            {
                problem(format!("`profile` `{profile}` is not a configured token profile"));
            }
            let methods = spec.methods.map(|list| {
                if list.is_empty() {
                    problem("`methods` must not be empty (leave it out to forward every method)".into());
                }
                list.iter()
                    .filter_map(|m| {
                        parse_method(m)
                            .map_err(|()| problem(format!("`methods`: `{m}` is not an upper-case HTTP method")))
                            .ok()
                    })
                    .collect::<Vec<_>>()
            });
            let timeout = match spec.timeout_ms {
                None => DEFAULT_TIMEOUT,
                Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
                Some(_) => {
                    problem(format!(
                        "`timeout_ms` must be a whole number from 1 to {MAX_TIMEOUT_MS}"
                    ));
                    DEFAULT_TIMEOUT
                }
            };
            let max_message_bytes = match spec.max_message_bytes.map(usize::try_from) {
                None => websocket::DEFAULT_MAX_MESSAGE_BYTES,
                Some(Ok(n)) if (1..=MAX_MESSAGE_BYTES).contains(&n) => n,
                Some(_) => {
                    problem(format!(
                        "`max_message_bytes` must be a whole number from 1 to {MAX_MESSAGE_BYTES}"
                    ));
                    websocket::DEFAULT_MAX_MESSAGE_BYTES
                }
            };
            if let Some(upstream) = upstream {
                routes.push(RouteSettings {
                    path: spec.path,
                    upstream,
                    profile: spec.profile,
                    methods,
                    timeout,
                    max_request_bytes: spec.max_request_bytes.unwrap_or(DEFAULT_MAX_REQUEST_BYTES),
                    max_message_bytes,
                    allow_http: spec.allow_http,
                    strip_cookies: spec.strip_cookies,
                });
            }
        }
        if errors.is_empty() {
            Ok(Self(routes.into()))
        } else {
            Err(errors)
        }
    }

    /// The route `path` belongs to, if any.
    pub(crate) fn find(&self, path: &str) -> Option<&RouteSettings> {
        self.0.iter().find(|r| r.rest(path).is_some())
    }

    /// Every route, in configuration order.
    pub fn all(&self) -> &[RouteSettings] {
        &self.0
    }
}

/// A prefix: starts with `/`, is not `/`, has no trailing `/`, no empty, `.` or `..` segment, and only plain path
/// characters (no `%`, `?`, `#`, `\`), so it is compared with request paths byte for byte.
fn check_prefix(path: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/".contains(c);
    let segments_ok = path
        .strip_prefix('/')
        .is_some_and(|rest| rest.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
    if segments_ok && path.chars().all(plain) {
        Ok(())
    } else {
        Err(
            "`path` must be a path such as /api/orders: starting with /, not / itself, no trailing /, no empty, \
             `.` or `..` segment, no `%`, `?` or `#`"
                .into(),
        )
    }
}

/// An upper-case method token (`GET`, `POST`, …).
fn parse_method(raw: &str) -> Result<Method, ()> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(());
    }
    Method::from_bytes(raw.as_bytes()).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &str, upstream: &str) -> RouteSpec {
        RouteSpec {
            path: path.into(),
            upstream: upstream.into(),
            profile: None,
            methods: None,
            timeout_ms: None,
            max_request_bytes: None,
            max_message_bytes: None,
            allow_http: false,
            strip_cookies: false,
        }
    }

    #[test]
    fn a_route_with_defaults() {
        let routes = Routes::build(
            vec![spec("/api/orders", "https://orders.internal:8443/v1")],
            Some(&["default"]),
        )
        .expect("valid");
        let r = routes.find("/api/orders/7").expect("found");
        assert_eq!(
            (r.timeout, r.max_request_bytes, r.max_message_bytes),
            (DEFAULT_TIMEOUT, DEFAULT_MAX_REQUEST_BYTES, 1024 * 1024)
        );
        assert!(r.allows(&Method::DELETE));
        assert_eq!(r.rest("/api/orders"), Some(""));
        assert_eq!(r.rest("/api/ordersx"), None);
        assert!(routes.find("/api/ordersx").is_none() && routes.find("/api").is_none());
        let t = r.target("/7", Some("a=1&b=%20")).expect("url");
        assert_eq!(t.as_str(), "https://orders.internal:8443/v1/7?a=1&b=%20");
        assert_eq!(
            r.target("", None).expect("url").as_str(),
            "https://orders.internal:8443/v1"
        );
        let root = Routes::build(vec![spec("/x", "https://h/")], None).expect("valid");
        assert_eq!(
            root.all()[0].target("/a/b", None).expect("url").as_str(),
            "https://h/a/b"
        );
    }

    #[test]
    fn every_problem_is_one_line() {
        let mut bad_methods = spec("/m", "https://h");
        bad_methods.methods = Some(vec!["get".into(), "POST".into()]);
        let mut bad_timeout = spec("/t", "https://h");
        bad_timeout.timeout_ms = Some(0);
        bad_timeout.max_message_bytes = Some(0);
        let mut unknown_profile = spec("/p", "https://h");
        unknown_profile.profile = Some("nope".into());
        let mut http_allowed = spec("/private", "http://10.0.0.7:8080/api");
        http_allowed.allow_http = true;
        let specs = vec![
            spec("/api", "https://h"),
            spec("/api/orders", "https://h"),
            spec("/auth/x", "https://h"),
            spec("/healthz", "https://h"),
            spec("/.well-known", "https://h"),
            spec("/", "https://h"),
            spec("/trailing/", "https://h"),
            spec("/a/../b", "https://h"),
            spec("/plain", "http://orders.internal"),
            spec("/query", "https://h/x?a=1"),
            spec("/user", "https://u:p@h/"),
            spec("/fragment", "https://h/#f"),
            spec("/loopback", "http://127.0.0.1:9000"),
            bad_methods,
            bad_timeout,
            unknown_profile,
            http_allowed,
        ];
        let errors = Routes::build(specs, Some(&["default"])).expect_err("invalid");
        for needle in [
            "route `/api/orders`: `path` overlaps the route `/api`",
            "route `/auth/x`: `path` overlaps avemint's own path",
            "route `/healthz`: `path` overlaps",
            "route `/.well-known`: `path` overlaps",
            "route `/`: `path` must be",
            "route `/trailing/`: `path` must be",
            "route `/a/../b`: `path` must be",
            "route `/plain`: `upstream` must use https",
            "route `/query`: `upstream` must not have a query",
            "route `/user`: `upstream` must not contain user-info",
            "route `/fragment`: `upstream` must not have a query or fragment",
            "route `/m`: `methods`: `get`",
            "route `/t`: `timeout_ms`",
            "route `/t`: `max_message_bytes`",
            "route `/p`: `profile` `nope`",
        ] {
            assert_eq!(
                errors.iter().filter(|e| e.starts_with(needle)).count(),
                1,
                "{needle} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 15, "{errors:#?}");
    }

    #[test]
    fn rests_that_could_leave_the_upstream_path_are_refused() {
        for ok in ["", "/", "/a/b", "/a.b", "/..a", "/a%20b"] {
            assert!(safe_rest(ok), "{ok}");
        }
        for bad in [
            "/..", "/a/../b", "/.", "/%2e%2E", "/.%2e/x", "/a%2fb", "/a%5Cb", "/a\\b",
        ] {
            assert!(!safe_rest(bad), "{bad}");
        }
    }
}
