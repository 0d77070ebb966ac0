//! The proxied routes (`[[routes]]` in the file, `AVEMINT_ROUTES` as a JSON
//! array): their shape as configured ([`RouteSpec`]), and the validated set
//! ([`Routes`]) with every problem reported at once.
//!
//! Why here and not in `config`: the rules (prefixes that overlap neither
//! each other nor avemint's own paths, the upstream URL rule, the bounds) are
//! the proxy's; `config` only reads the sources and hands the specs over.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde::Deserialize;
use url::Url;

use super::access::{RequiredClaims, RouteAuth};
use super::websocket;
pub use avemint_base::route::{Route, overlaps};
pub use avemint_base::web_url::{PlainHttp, parse_web_url_with};

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
    /// `required` (the default), `optional` or `none`: see [`RouteAuth`].
    pub auth: Option<String>,
    /// Claim name → a value or an array of values (any of which will do): see [`RequiredClaims`].
    pub require_claims: Option<serde_json::Map<String, serde_json::Value>>,
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
    /// Whether a session is needed and a bearer attached.
    pub auth: RouteAuth,
    /// Claims the route profile's app JWT must hold (none: no requirement).
    pub require_claims: RequiredClaims,
}

impl RouteSettings {
    /// Whether `method` is forwarded.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// The part of `path` below the prefix (`""` or starting with `/`), when `path` is this route's.
    pub fn rest<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix(self.path.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The upstream URL of a request whose path below the prefix is `rest`, with the query as sent; refused
    /// ([`UnsafePath`]) unless `rest` passes [`check_rest`] both as received and as it is sent (after the URL
    /// parser's re-encoding), so the check applies to exactly the path the upstream gets.
    pub fn target(&self, rest: &str, query: Option<&str>) -> Result<Url, UnsafePath> {
        check_rest(rest)?;
        let base = self.upstream.as_str().trim_end_matches('/');
        let mut target = format!("{base}{rest}");
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        let url = Url::parse(&target).map_err(|_| UnsafePath::Unparsable)?;
        let base_path = self.upstream.path().trim_end_matches('/');
        let sent = url.path().strip_prefix(base_path).ok_or(UnsafePath::Unparsable)?;
        check_rest(sent)?;
        Ok(url)
    }
}

/// Why the path below a route's prefix is not forwarded (400 `invalid_request`): some normaliser an upstream
/// may use could read it as leaving the route's upstream path. See [`check_rest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    /// A segment that is `.` or `..` (or only dots) in some reading.
    #[error("the path has a dot segment (`.` or `..`, in some spelling)")]
    DotSegment,
    /// A backslash, a control character, a `?` or `#` as such, an encoded `/`, or a look-alike of one of them.
    #[error("the path has a backslash, a control character or an encoded slash")]
    Separator,
    /// An empty segment (`//`) anywhere but at the end.
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    /// Still percent-encoded after [`MAX_DECODES`] decodings.
    #[error("the path is percent-encoded too many times")]
    TooDeep,
    /// The upstream URL could not be formed from it.
    #[error("the path cannot be forwarded")]
    Unparsable,
}

/// How many times a segment is percent-decoded when looking for a reading that leaves the prefix; a segment
/// that still changes after that many decodings is refused.
pub(crate) const MAX_DECODES: usize = 4;

/// Whether the part of a path below a route's prefix (`""` or starting with `/`) can be forwarded as is: no
/// normaliser an upstream may apply can read it as leaving the route's upstream path. Each segment is read as
/// received and after each of up to [`MAX_DECODES`] percent-decodings (`%252e` is `%2e` is `.`); in every one of
/// those readings it must have:
/// - no backslash, no control character (`%00`, `%09`, …, `%7f`), no `/` (so no `%2f`, `%252f`), no `?` or `#` as
///   such, no overlong UTF-8 lead byte (`%c0`, `%c1`), no IIS `%u` escape, no full-width `／` or `＼`;
/// - no dot segment: with `;` and what follows removed (Tomcat's path parameters) and white space trimmed, the
///   segment is not made of dots only (`.`, `..`, `...`; also the dots NFKC maps to `.`).
///
/// And no segment is empty except the last (`/a/` is fine, `//a` is not). Ordinary paths pass: UTF-8
/// (`%C3%A9`), `%20` inside a name, `;` in a segment that is not dots, a literal `%` (`100%25`).
pub fn check_rest(rest: &str) -> Result<(), UnsafePath> {
    let Some(below) = rest.strip_prefix('/') else {
        return if rest.is_empty() {
            Ok(())
        } else {
            Err(UnsafePath::Unparsable)
        };
    };
    if rest.contains(['?', '#']) {
        return Err(UnsafePath::Separator);
    }
    let segments: Vec<&str> = below.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        if segment.is_empty() && i != last {
            return Err(UnsafePath::EmptySegment);
        }
        check_segment(segment.as_bytes())?;
    }
    Ok(())
}

/// One segment, read as received and after each percent-decoding (see [`check_rest`]).
fn check_segment(raw: &[u8]) -> Result<(), UnsafePath> {
    let mut reading = raw.to_vec();
    for _ in 0..=MAX_DECODES {
        let text = String::from_utf8_lossy(&reading);
        if reading
            .iter()
            .any(|&b| b == b'/' || b == b'\\' || b.is_ascii_control() || b == 0xc0 || b == 0xc1)
            || text.contains(['\u{ff0f}', '\u{ff3c}'])
            || has_iis_escape(&reading)
        {
            return Err(UnsafePath::Separator);
        }
        if is_dot_segment(&text) {
            return Err(UnsafePath::DotSegment);
        }
        let decoded: Vec<u8> = percent_encoding::percent_decode(&reading).collect();
        if decoded == reading {
            return Ok(());
        }
        reading = decoded;
    }
    Err(UnsafePath::TooDeep)
}

/// Whether a segment is dots only once `;…` is removed and white space (and control characters) trimmed.
fn is_dot_segment(segment: &str) -> bool {
    let name = segment.split(';').next().unwrap_or_default();
    let name = name.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    !name.is_empty()
        && name
            .chars()
            .all(|c| matches!(c, '.' | '\u{ff0e}' | '\u{fe52}' | '\u{2024}'))
}

/// IIS's `%uXXXX` escapes.
fn has_iis_escape(reading: &[u8]) -> bool {
    reading
        .windows(6)
        .any(|w| w[0] == b'%' && w[1].eq_ignore_ascii_case(&b'u') && w[2..].iter().all(u8::is_ascii_hexdigit))
}

/// The validated routes; at most one matches any path (prefixes do not overlap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes(Arc<[RouteSettings]>);

impl Routes {
    /// Validates `specs`; `profiles` are the configured token profile names (`None`: unknown, so not checked).
    /// Every problem is one line, `route `PATH`: …`.
    pub fn build(specs: Vec<RouteSpec>, profiles: Option<&[&str]>) -> Result<Self, Vec<String>> {
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
            let auth = match spec.auth.as_deref().map(RouteAuth::parse) {
                None => RouteAuth::Required,
                Some(Ok(auth)) => auth,
                Some(Err(e)) => {
                    problem(e);
                    RouteAuth::Required
                }
            };
            let require_claims = match spec.require_claims.map(RequiredClaims::parse) {
                None => RequiredClaims::default(),
                Some(Ok(required)) => required,
                Some(Err(errors)) => {
                    errors.into_iter().for_each(&mut problem);
                    RequiredClaims::default()
                }
            };
            if !require_claims.is_empty() && auth != RouteAuth::Required {
                problem("`require_claims` needs `auth = \"required\"` (without a session there are no claims)".into());
            }
            if auth == RouteAuth::None && spec.profile.is_some() {
                problem("`profile` has no use with `auth = \"none\"`: no app JWT is attached".into());
            }
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
                    auth,
                    require_claims,
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
    pub fn find(&self, path: &str) -> Option<&RouteSettings> {
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
            auth: None,
            require_claims: None,
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
    fn auth_modes_and_required_claims_are_checked_one_line_each() {
        let object = |v: serde_json::Value| match v {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        };
        let mut public = spec("/public", "https://h");
        public.auth = Some("none".into());
        let mut optional = spec("/optional", "https://h");
        optional.auth = Some("optional".into());
        let mut guarded = spec("/admin", "https://h");
        guarded.require_claims = object(serde_json::json!({"roles": "admin", "tier": ["gold", "platinum"]}));
        let routes = Routes::build(vec![public, optional, guarded, spec("/plain", "https://h")], None).expect("valid");
        let auth: Vec<RouteAuth> = routes.all().iter().map(|r| r.auth).collect();
        assert_eq!(
            auth,
            [
                RouteAuth::None,
                RouteAuth::Optional,
                RouteAuth::Required,
                RouteAuth::Required
            ]
        );
        let admin = &routes.all()[2].require_claims;
        assert_eq!(
            admin.unmet(&object(serde_json::json!({"roles": ["admin"], "tier": "gold"})).unwrap_or_default()),
            None
        );
        assert!(routes.all()[3].require_claims.is_empty());

        let mut bad_auth = spec("/a", "https://h");
        bad_auth.auth = Some("public".into());
        let mut no_session_claims = spec("/b", "https://h");
        no_session_claims.auth = Some("none".into());
        no_session_claims.require_claims = object(serde_json::json!({"roles": "admin"}));
        let mut optional_claims = spec("/c", "https://h");
        optional_claims.auth = Some("optional".into());
        optional_claims.require_claims = object(serde_json::json!({"roles": "admin"}));
        let mut public_profile = spec("/d", "https://h");
        public_profile.auth = Some("none".into());
        public_profile.profile = Some("default".into());
        let mut bad_claims = spec("/e", "https://h");
        bad_claims.require_claims = object(serde_json::json!({"roles": []}));
        let errors = Routes::build(
            vec![bad_auth, no_session_claims, optional_claims, public_profile, bad_claims],
            Some(&["default"]),
        )
        .expect_err("invalid");
        for needle in [
            "route `/a`: `auth` must be",
            "route `/b`: `require_claims` needs `auth = \"required\"`",
            "route `/c`: `require_claims` needs `auth = \"required\"`",
            "route `/d`: `profile` has no use with `auth = \"none\"`",
            "route `/e`: `require_claims`: `roles` must be",
        ] {
            assert_eq!(
                errors.iter().filter(|e| e.starts_with(needle)).count(),
                1,
                "{needle} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 5, "{errors:#?}");
    }

    /// Paths below a route's prefix that are forwarded: ordinary ones, odd but harmless ones.
    const ORDINARY: [&str; 14] = [
        "",
        "/",
        "/a/b",
        "/a/b/",
        "/a.b",
        "/..a",
        "/a..",
        "/a%20b",
        "/caf%C3%A9",
        "/a;b=c",
        "/a;b/c",
        "/100%25",
        "/%zz",
        "/items.json;v=1",
    ];

    #[test]
    fn rests_that_could_leave_the_upstream_path_are_refused() {
        for ok in ORDINARY {
            assert_eq!(check_rest(ok), Ok(()), "{ok}");
        }
        use UnsafePath::*;
        for (bad, why) in [
            ("/..", DotSegment),
            ("/a/../b", DotSegment),
            ("/.", DotSegment),
            ("/...", DotSegment),
            ("/%2e%2E", DotSegment),
            ("/.%2e/x", DotSegment),
            ("/..;/admin", DotSegment),
            ("/..;a=b", DotSegment),
            ("/%2e%2e;", DotSegment),
            ("/.;", DotSegment),
            ("/..%3b", DotSegment),
            ("/%2e%2e%3b", DotSegment),
            ("/%252e%252e", DotSegment),
            ("/..%20", DotSegment),
            ("/%20..", DotSegment),
            ("/%c2%a0..", DotSegment),
            ("/%ef%bc%8e%ef%bc%8e", DotSegment),
            ("/a%2fb", Separator),
            ("/a%2Fb", Separator),
            ("/a%252fb", Separator),
            ("/a%5Cb", Separator),
            ("/a\\b", Separator),
            ("/..\\admin", Separator),
            ("/%5c..%5c", Separator),
            ("/..%00", Separator),
            ("/..%09", Separator),
            ("/a%250ab", Separator),
            ("/a%7f", Separator),
            ("/%c0%ae%c0%ae", Separator),
            ("/%u002e%u002e", Separator),
            ("/a%ef%bc%8fb", Separator),
            ("/a?b", Separator),
            ("//admin", EmptySegment),
            ("/a//b", EmptySegment),
            ("/%252525252e", TooDeep),
            ("a", Unparsable),
        ] {
            assert_eq!(check_rest(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn the_path_sent_upstream_is_the_checked_one() {
        let routes = Routes::build(vec![spec("/api", "https://h/v1/")], None).expect("valid");
        let route = &routes.all()[0];
        for (rest, sent) in [
            ("/a%20b", "/v1/a%20b"),
            ("/a;b", "/v1/a;b"),
            ("/caf%C3%A9", "/v1/caf%C3%A9"),
            ("/a\"b", "/v1/a%22b"),
            ("", "/v1"),
        ] {
            assert_eq!(route.target(rest, None).expect("forwarded").path(), sent, "{rest}");
        }
        assert_eq!(route.target("/%2e%2e", None), Err(UnsafePath::DotSegment));
    }

    proptest::proptest! {
        /// Whatever `check_rest` accepts stays below the upstream path under every reading of `readings`.
        #[test]
        fn accepted_paths_stay_below_the_prefix_whatever_the_upstream_normalises(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "/", "/", "a", "b", ".", "..", "%2e", "%2E", "%252e", "%25", "2e", "%", ";", ";x=1", "%3b", "%253b",
                "%2f", "%5c", "\\", "%00", "%09", "%20", " ", "%c2%a0", "%ef%bc%8e", "%u002e", "%c0%ae",
            ]), 0..10)
        ) {
            let rest = format!("/{}", parts.concat());
            let routes = Routes::build(vec![spec("/api", "https://h/v1")], None).expect("valid");
            if let Ok(url) = routes.all()[0].target(&rest, None) {
                let sent = url.path();
                proptest::prop_assert_eq!(crate::proxy::readings::escape("/v1", sent), None, "{} sent as {}", rest, sent);
            }
        }
    }
}
