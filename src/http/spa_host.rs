//! The SPA on avemint's own origin (`[spa]`): its built files (`root`), or in development its dev server
//! (`upstream`, e.g. Vite's), answered in front of the router for every path that is not avemint's (its own
//! routes, `/auth/*`, `/.well-known/*`, `/oauth/*`, `/docs/*`) nor a proxied route's. No session is needed: the
//! signed-out page must load.
//!
//! Files (`root`): `GET` and `HEAD` only. A path is served only if proxy mode's path check passes
//! (`proxy::settings::check_rest`: no dot segment in any spelling, backslash, control character, encoded slash or
//! empty segment; 400 otherwise), no segment starts with `.` (dotfiles are not served), and the file, symlinks
//! resolved, is inside `root`. A navigation (`Sec-Fetch-Mode: navigate`, or `Accept: text/html` from a client that
//! sends no `Sec-Fetch-Mode`) that matches no file gets `index.html`; any other miss is the JSON 404, so a missing
//! script or style sheet is never answered with a page. Answers carry an `ETag` (304 on a matching
//! `If-None-Match`), `Cache-Control: public, max-age=31536000, immutable` for hashed names (see [`is_hashed`]) and
//! `no-cache` for the rest (`index.html` included), the precompressed `.br` or `.gz` sibling when the browser
//! accepts it (`Vary: Accept-Encoding`), and on HTML the page's `Content-Security-Policy`
//! (`content_security_policy`, or [`DEFAULT_CSP`]). The guard adds the usual security headers.
//!
//! Development (`upstream`): every such request (any method, WebSockets included: Vite's HMR socket) goes to the
//! dev server through proxy mode's forwarding (`proxy::relay`), without a session or bearer; a WebSocket handshake
//! still needs avemint's own `Origin` (or one of `AVEMINT_ALLOWED_ORIGINS`). Its pages get only the CSP configured.
//!
//! Why "host": `spa.rs` is the SPA *helper* (`/avemint.js`); this serves the SPA itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use poem::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use poem::{Body, IntoResponse, Request, Response};

use super::AppState;
use super::errors::answer;
use super::security::PagePolicy;
use super::signin_page::{ErrorPath, is_navigation};
use avemint_base::metrics::ProxyRouteMetrics;
use avemint_base::route::Route;
use avemint_base::web_url::{PlainHttp, parse_web_url_with};
use avemint_core::proxy::settings::check_rest;
use avemint_core::proxy::{RequiredClaims, RouteAuth, RouteSettings, websocket};

/// The page's `Content-Security-Policy` unless `content_security_policy` says otherwise: scripts, styles, fonts,
/// API calls and frames from avemint's origin only, images also from `data:` and https; inline style attributes
/// are allowed (common in React apps, and far less dangerous than inline script), inline script is not.
pub(crate) const DEFAULT_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: https:; font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'self'; \
     form-action 'self'; frame-ancestors 'none'";

/// `Cache-Control` of a file whose name carries a content hash: it never changes under that name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of everything else (`index.html` above all): revalidated (`ETag`) before each use.
const REVALIDATE: &str = "no-cache";

/// `[spa]`: where the SPA comes from, and its page's CSP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaSettings {
    /// `root` or `upstream` (none: avemint serves no SPA).
    pub source: Option<SpaSource>,
    /// `content_security_policy` (`AVEMINT_SPA_CSP`).
    pub content_security_policy: Option<PageCsp>,
}

/// Where the SPA's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpaSource {
    /// `root` (`AVEMINT_SPA_ROOT`): the built files.
    Root(SpaRoot),
    /// `upstream` (`AVEMINT_SPA_UPSTREAM`): a development server.
    Upstream(url::Url),
}

/// A directory holding the SPA's built files, `index.html` among them (its path with symlinks resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaRoot(PathBuf);

impl SpaRoot {
    /// A directory that exists and holds `index.html`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let dir = std::fs::canonicalize(raw.trim())
            .map_err(|e| format!("`{}` cannot be opened: {}", raw.trim(), e.kind()))?;
        if !dir.is_dir() {
            return Err(format!("`{}` is not a directory", dir.display()));
        }
        if !dir.join("index.html").is_file() {
            return Err(format!(
                "`{}` has no index.html (point it at the build output, e.g. Vite's `dist`)",
                dir.display()
            ));
        }
        Ok(Self(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// The development server's URL: `https`, or `http` to a loopback host; no query.
pub fn parse_upstream(raw: &str) -> Result<url::Url, String> {
    parse_web_url_with(raw, PlainHttp::LoopbackOnly).map_err(|e| e.to_string())
}

/// A `Content-Security-Policy` value: printable ASCII, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageCsp(HeaderValue);

impl PageCsp {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() || !raw.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err("must be a Content-Security-Policy on one line of printable ASCII".into());
        }
        HeaderValue::from_str(raw)
            .map(Self)
            .map_err(|_| "must be a valid header value".to_owned())
    }
}

/// The SPA as this instance serves it.
pub(crate) enum Spa {
    Off,
    Files {
        root: PathBuf,
        csp: HeaderValue,
    },
    DevServer {
        /// Proxy mode's view of the dev server: a route whose prefix is empty (every path goes up as it is), with
        /// no session and no bearer.
        route: Box<RouteSettings>,
        metrics: ProxyRouteMetrics,
        csp: Option<HeaderValue>,
    },
}

impl Spa {
    pub(crate) fn new(settings: SpaSettings) -> Self {
        let csp = settings.content_security_policy.map(|c| c.0);
        match settings.source {
            None => Spa::Off,
            Some(SpaSource::Root(root)) => Spa::Files {
                root: root.0,
                csp: csp.unwrap_or(HeaderValue::from_static(DEFAULT_CSP)),
            },
            Some(SpaSource::Upstream(upstream)) => Spa::DevServer {
                route: Box::new(RouteSettings {
                    path: String::new(),
                    upstream,
                    profile: None,
                    methods: None,
                    timeout: Duration::from_secs(30),
                    max_request_bytes: 10 * 1024 * 1024,
                    max_message_bytes: 64 * 1024 * 1024,
                    allow_http: false,
                    strip_cookies: false,
                    auth: RouteAuth::None,
                    require_claims: RequiredClaims::default(),
                }),
                metrics: avemint_base::metrics::proxy_route("spa"),
                csp,
            },
        }
    }

    /// What the start-up line says about it.
    pub(crate) fn describe(&self) -> String {
        match self {
            Spa::Off => "off".into(),
            Spa::Files { root, .. } => format!("files from {}", root.display()),
            Spa::DevServer { route, .. } => format!("development server {}", route.upstream),
        }
    }

    /// Whether the SPA answers a request for `path` with `method`: never one of avemint's own paths (proxied
    /// routes are answered before this is asked).
    pub(crate) fn takes(&self, method: &Method, path: &str) -> bool {
        let files = match self {
            Spa::Off => return false,
            Spa::Files { .. } => true,
            Spa::DevServer { .. } => false,
        };
        (!files || matches!(*method, Method::GET | Method::HEAD)) && !Route::is_own(path)
    }
}

/// The SPA settings in use: `[spa]` and `error_path`, read from the configuration together and replaced together.
pub(crate) struct SpaInUse {
    pub(crate) spa: Spa,
    /// `error_path`: where a browser whose sign-in failed is sent (none: avemint's own page).
    pub(crate) error_path: Option<ErrorPath>,
}

impl SpaInUse {
    pub(crate) fn new(settings: SpaSettings, error_path: Option<ErrorPath>) -> Self {
        Self {
            spa: Spa::new(settings),
            error_path,
        }
    }
}

/// The SPA settings in use, shared by every request: each request reads one snapshot ([`LiveSpa::current`], taken
/// by `http::respond` and handed on in the request's data); a configuration reload puts new ones in
/// ([`LiveSpa::replace`]), as `proxy::LiveRoutes` does for the routes.
pub(crate) struct LiveSpa(RwLock<Arc<SpaInUse>>);

impl LiveSpa {
    pub(crate) fn new(spa: SpaInUse) -> Self {
        Self(RwLock::new(Arc::new(spa)))
    }

    /// The settings in use now.
    pub(crate) fn current(&self) -> Arc<SpaInUse> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `spa` in use from the next request on; requests already running (an open HMR WebSocket included)
    /// finish on the settings they started with.
    pub(crate) fn replace(&self, spa: SpaInUse) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(spa);
    }
}

/// Answers a request the SPA takes (see [`Spa::takes`]; the caller checked) from `in_use`, the request's snapshot
/// of the SPA settings; `Err` gives the request back when the SPA is off.
pub(crate) async fn handle(state: &Arc<AppState>, in_use: &SpaInUse, req: Request) -> Result<Response, Request> {
    Ok(match &in_use.spa {
        Spa::Files { root, csp } => serve_file(root, csp, &req).await,
        Spa::DevServer { route, metrics, csp } => {
            let mut resp = dev_server(state, route, metrics, req).await;
            page_policy(&mut resp, csp.as_ref());
            resp
        }
        Spa::Off => return Err(req),
    })
}

/// The dev server's answer (a WebSocket handshake needs an allowed `Origin`, as on a proxied route).
async fn dev_server(
    state: &Arc<AppState>,
    route: &RouteSettings,
    metrics: &ProxyRouteMetrics,
    req: Request,
) -> Response {
    if websocket::is_handshake(req.method(), req.headers())
        && let Err(refused) = super::proxy::check_handshake_origin(state, &req)
    {
        return refused.into_response();
    }
    super::proxy::relay(state, route, metrics, req, None, None)
        .await
        .unwrap_or_else(|refused| refused)
}

/// Sets the page's CSP on an HTML answer (`csp`; none: no CSP at all) and tells the guard to leave it.
fn page_policy(resp: &mut Response, csp: Option<&HeaderValue>) {
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if html {
        match csp {
            Some(csp) => resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, csp.clone()),
            None => resp.headers_mut().remove(header::CONTENT_SECURITY_POLICY),
        };
        resp.extensions_mut().insert(PagePolicy);
    }
}

/// A file of the SPA, `index.html` for a navigation that matches none, or an error answer.
async fn serve_file(root: &Path, csp: &HeaderValue, req: &Request) -> Response {
    let path = req.uri().path();
    if let Err(unsafe_path) = check_rest(path) {
        return answer(StatusCode::BAD_REQUEST, "invalid_request", unsafe_path.to_string());
    }
    let found = match relative(path) {
        Some(rel) => find(root, &rel).await,
        None => None,
    };
    let file = match found {
        Some(file) => file,
        None if is_navigation(req.headers()) => match find(root, Path::new("index.html")).await {
            Some(index) => index,
            None => return not_found(),
        },
        None => return not_found(),
    };
    let mut resp = respond(&file, req).await;
    page_policy(&mut resp, Some(csp));
    resp
}

fn not_found() -> Response {
    answer(StatusCode::NOT_FOUND, "not_found", "no such file")
}

/// The path below the root a request path names (each segment percent-decoded once; the path check has ruled out
/// every reading that leaves the root), `index.html` for a directory's path; `None` for a dotfile.
fn relative(path: &str) -> Option<PathBuf> {
    let mut rel = PathBuf::new();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8().ok()?;
        if decoded.starts_with('.') || decoded.contains(['/', '\\', '\0']) {
            return None;
        }
        rel.push(decoded.as_ref());
    }
    if path.ends_with('/') {
        rel.push("index.html");
    }
    Some(rel)
}

/// A file to answer with: the path, its metadata, and its content type.
struct Found {
    path: PathBuf,
    len: u64,
    modified: u128,
    content_type: &'static str,
    cache_control: &'static str,
}

/// `rel` below `root` if it is a regular file whose real path (symlinks resolved) is inside `root`; a directory
/// gives its `index.html`.
async fn find(root: &Path, rel: &Path) -> Option<Found> {
    let mut path = root.join(rel);
    if tokio::fs::metadata(&path).await.ok()?.is_dir() {
        path.push("index.html");
    }
    let real = tokio::fs::canonicalize(&path).await.ok()?;
    if !real.starts_with(root) {
        return None;
    }
    let meta = tokio::fs::metadata(&real).await.ok()?;
    if !meta.is_file() {
        return None;
    }
    let name = real.file_name()?.to_str()?;
    let content_type = content_type(name);
    let cache_control = if !content_type.starts_with("text/html") && is_hashed(name) {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    Some(Found {
        len: meta.len(),
        modified: modified(&meta),
        path: real,
        content_type,
        cache_control,
    })
}

fn modified(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// The encodings a file may be sent in, best first: its precompressed siblings and their suffixes.
const ENCODINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// The answer for `file`: its precompressed sibling when the browser accepts one, 304 when the browser's copy is
/// current, the body (none for `HEAD`) otherwise.
async fn respond(file: &Found, req: &Request) -> Response {
    let mut chosen: Option<(&str, PathBuf, u64, u128)> = None;
    for (encoding, suffix) in ENCODINGS {
        if !accepts(req.headers(), encoding) {
            continue;
        }
        let mut name = file.path.clone().into_os_string();
        name.push(suffix);
        let sibling = PathBuf::from(name);
        let parent = file.path.parent().unwrap_or(&file.path);
        let inside = tokio::fs::canonicalize(&sibling)
            .await
            .is_ok_and(|real| real.parent() == Some(parent));
        if let Ok(meta) = tokio::fs::metadata(&sibling).await
            && inside
            && meta.is_file()
        {
            chosen = Some((encoding, sibling, meta.len(), modified(&meta)));
            break;
        }
    }
    let (encoding, path, len, modified) = match chosen {
        Some((encoding, path, len, modified)) => (Some(encoding), path, len, modified),
        None => (None, file.path.clone(), file.len, file.modified),
    };
    let etag = format!("\"{modified:x}-{len:x}{}\"", encoding.map_or("", |e| &e[..2]));
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, file.cache_control)
        .header(header::VARY, "Accept-Encoding");
    if matches_etag(req.headers(), &etag) {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder = builder
        .header(header::CONTENT_TYPE, file.content_type)
        .header(header::CONTENT_LENGTH, len);
    if let Some(encoding) = encoding {
        builder = builder.header(header::CONTENT_ENCODING, encoding);
    }
    if req.method() == Method::HEAD {
        return builder.finish();
    }
    match tokio::fs::File::open(&path).await {
        Ok(f) => builder.body(Body::from_async_read(f)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e.kind(), "an SPA file could not be read");
            answer(StatusCode::NOT_FOUND, "not_found", "no such file")
        }
    }
}

/// Whether `Accept-Encoding` accepts `encoding` (named, with a quality above 0).
fn accepts(headers: &HeaderMap, encoding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let named = parts.next().is_some_and(|n| n.eq_ignore_ascii_case(encoding));
            let quality = parts
                .find_map(|p| p.strip_prefix("q="))
                .map_or(1.0, |q| q.parse::<f32>().unwrap_or(0.0));
            named && quality > 0.0
        })
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak comparison (RFC 9110 §13.1.2).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// Whether a file name carries a content hash, so it never changes under that name: its stem (the name up to the
/// last `.`) ends with `-HASH` or `.HASH`, HASH 8 to 64 ASCII letters, digits or `_` with at least one letter and
/// one digit (Vite's `index-B4f0aX9z.js`, webpack's `main.3f2a1b9c.js`). A name that merely looks so gets
/// `immutable`; one that does not only loses caching (a hash without a digit, about a quarter of Vite's, is then
/// revalidated like any other file).
pub(crate) fn is_hashed(name: &str) -> bool {
    let Some((stem, _extension)) = name.rsplit_once('.') else {
        return false;
    };
    let Some(at) = stem.rfind(['-', '.']) else {
        return false;
    };
    let hash = &stem[at + 1..];
    (8..=64).contains(&hash.len())
        && hash.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && hash.bytes().any(|b| b.is_ascii_digit())
        && hash.bytes().any(|b| b.is_ascii_alphabetic())
}

/// The `Content-Type` of a file, by its extension.
fn content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hashed_names_are_recognised_and_plain_ones_are_not() {
        for hashed in [
            "index-B4f0aX9z.js",
            "index-D8sNc3Ph.css",
            "main.3f2a1b9c.js",
            "logo-a1b2c3d4e5.svg",
            "chunk.5e7_Ab12.mjs",
        ] {
            assert!(is_hashed(hashed), "{hashed}");
        }
        for plain in [
            "index.html",
            "robots.txt",
            "component-settings.js",
            "Company-Settings.png",
            "favicon.ico",
            "vendor-12345678.js",
            "a-b.c",
            "noextension-ab12cd34",
            "x-ab1.js",
        ] {
            assert!(!is_hashed(plain), "{plain}");
        }
    }

    #[test]
    fn navigations_are_told_from_asset_and_api_requests() {
        assert!(is_navigation(&headers(&[("sec-fetch-mode", "navigate")])));
        assert!(is_navigation(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )])));
        assert!(!is_navigation(&headers(&[
            ("sec-fetch-mode", "no-cors"),
            ("accept", "text/html")
        ])));
        assert!(!is_navigation(&headers(&[("accept", "*/*")])));
        assert!(!is_navigation(&headers(&[("accept", "application/json")])));
        assert!(!is_navigation(&headers(&[])));
    }

    #[test]
    fn accept_encoding_and_if_none_match() {
        let h = headers(&[("accept-encoding", "gzip;q=0.5, BR, deflate;q=0")]);
        assert!(accepts(&h, "br") && accepts(&h, "gzip") && !accepts(&h, "deflate") && !accepts(&h, "zstd"));
        assert!(!accepts(&headers(&[("accept-encoding", "br;q=0")]), "br"));
        let h = headers(&[("if-none-match", "\"a\", W/\"b-1\"")]);
        assert!(matches_etag(&h, "\"b-1\"") && matches_etag(&h, "\"a\"") && !matches_etag(&h, "\"c\""));
        assert!(matches_etag(&headers(&[("if-none-match", "*")]), "\"x\""));
        assert!(!matches_etag(&headers(&[]), "\"x\""));
    }

    #[test]
    fn request_paths_map_below_the_root_and_dotfiles_do_not() {
        assert_eq!(relative("/"), Some(PathBuf::from("index.html")));
        assert_eq!(relative("/assets/a.js"), Some(PathBuf::from("assets/a.js")));
        assert_eq!(relative("/caf%C3%A9/"), Some(PathBuf::from("café/index.html")));
        assert_eq!(relative("/a%20b.txt"), Some(PathBuf::from("a b.txt")));
        assert_eq!(relative("/.env"), None);
        assert_eq!(relative("/.git/config"), None);
        assert_eq!(relative("/a/%2e%2e"), None);
        assert_eq!(relative("/%ff"), None);
    }

    #[test]
    fn settings_parse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("utf-8");
        assert!(
            SpaRoot::parse(path)
                .expect_err("no index.html")
                .contains("no index.html")
        );
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").expect("write");
        let root = SpaRoot::parse(path).expect("valid");
        assert_eq!(root.path(), std::fs::canonicalize(dir.path()).expect("real path"));
        assert!(SpaRoot::parse(&format!("{path}/index.html")).is_err(), "a file");
        assert!(SpaRoot::parse("/no/such/dir").is_err());
        assert!(parse_upstream("http://127.0.0.1:5173").is_ok());
        assert!(
            parse_upstream("http://vite.internal:5173").is_err(),
            "plain http off loopback"
        );
        assert!(PageCsp::parse("default-src 'self'").is_ok());
        assert!(PageCsp::parse("").is_err() && PageCsp::parse("a\nb").is_err() && PageCsp::parse("é").is_err());
    }
}
