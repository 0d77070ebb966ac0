//! Sign-in failures a person can read: when a browser *navigates* to `/auth/login` or `/auth/callback` (Ave's
//! redirect back, a bookmark) and the sign-in fails, it gets an HTML page saying what happened, with a link to try
//! again (back to the page it started from), instead of the JSON error; or, with `error_path`
//! (`AVEMINT_ERROR_PATH`), a redirect to the SPA's own page at `{error_path}?error=<code>`. Script calls (`fetch`,
//! anything without `Sec-Fetch-Mode: navigate` or `Accept: text/html`) keep the JSON. The status, the cookies set
//! or expired and the log lines stay what they are.
//!
//! Why its own module: one rendering for every failure of both sign-in navigations, the guard's refusals (rate
//! limits) included, applied once to the finished answer (`http::respond_in_span`).

use std::sync::{Arc, OnceLock};

use poem::Response;
use poem::http::{HeaderMap, HeaderValue, StatusCode, header};

use avemint_base::route::Route;
use avemint_core::signin::ReturnPath;

/// Whether the request is a top-level navigation: `Sec-Fetch-Mode: navigate`, or, from a client that sends no
/// `Sec-Fetch-Mode`, an `Accept` that lists `text/html`.
pub(crate) fn is_navigation(headers: &HeaderMap) -> bool {
    match headers.get("sec-fetch-mode") {
        Some(mode) => mode.as_bytes() == b"navigate",
        None => headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/html")),
    }
}

/// `error_path` (`AVEMINT_ERROR_PATH`): the SPA's page for sign-in failures, a path on avemint's origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPath(String);

impl ErrorPath {
    /// A same-origin path (`/signin-error`) without query or fragment, exactly as `return_to` would keep it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let kept = ReturnPath::parse(Some(raw));
        if raw.contains(['?', '#']) || kept.as_str() != raw || raw.starts_with(Route::AUTH_PREFIX) {
            return Err(
                "must be a path on avemint's origin such as /signin-error: starting with /, no query, fragment, \
                 dot segments or /auth/"
                    .into(),
            );
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where "try again" leads: the return path of the sign-in that failed, once known (the callback learns it from
/// the login cookie; `/auth/login` has it in its query).
#[derive(Debug, Clone, Default)]
pub(crate) struct RetryTarget(Arc<OnceLock<String>>);

impl RetryTarget {
    /// Records the return path of the failing sign-in (the first one recorded counts).
    pub(crate) fn set(&self, return_to: &ReturnPath) {
        let _ = self.0.set(return_to.as_str().to_owned());
    }

    fn get(&self) -> &str {
        self.0.get().map_or("/", String::as_str)
    }
}

/// A sign-in navigation whose failure is rendered for a person.
pub(crate) struct SignInNavigation {
    retry: RetryTarget,
}

impl SignInNavigation {
    /// `Some` for a browser navigation to `/auth/login` or `/auth/callback`.
    pub(crate) fn of(path: &str, query: Option<&str>, headers: &HeaderMap) -> Option<Self> {
        let route = Route::of(path)?;
        if !matches!(route, Route::Login | Route::Callback) || !is_navigation(headers) {
            return None;
        }
        let retry = RetryTarget::default();
        if route == Route::Login {
            let return_to = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(k, _)| k == "return_to")
                .map(|(_, v)| v.into_owned());
            retry.set(&ReturnPath::parse(return_to.as_deref()));
        }
        Some(Self { retry })
    }

    /// What the handler records the return path in.
    pub(crate) fn retry(&self) -> RetryTarget {
        self.retry.clone()
    }

    /// The answer for a person: a failure (4xx, 5xx) becomes the HTML page, or a redirect to `error_path`; a
    /// success passes as it is.
    pub(crate) async fn render(self, mut resp: Response, error_path: Option<&ErrorPath>) -> Response {
        let status = resp.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return resp;
        }
        let body = resp.take_body().into_bytes().await.unwrap_or_default();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let code = parsed["error"]
            .as_str()
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            .unwrap_or("server_error")
            .to_owned();
        let description = parsed["error_description"].as_str().unwrap_or_default().to_owned();
        let headers = resp.headers_mut();
        headers.remove(header::CONTENT_LENGTH);
        match error_path {
            Some(path) => {
                let location = format!("{}?error={code}", path.as_str());
                resp.set_status(StatusCode::FOUND);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, value);
                }
                resp.headers_mut().remove(header::CONTENT_TYPE);
                resp.set_body(());
            }
            None => {
                let page = page(status, &code, &description, self.retry.get());
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp.set_body(page);
            }
        }
        resp
    }
}

/// What a person is told for each error code.
fn headline(code: &str) -> &'static str {
    match code {
        "access_denied" => "You chose not to sign in at Ave.",
        "rate_limited" => "There were too many sign-in attempts from your network. Wait a moment, then try again.",
        "temporarily_unavailable" => "Ave cannot be reached right now. Try again in a moment.",
        "invalid_grant" => "Ave did not accept this sign-in: it may have taken too long, or been used already.",
        "invalid_token" => "Ave's answer to this sign-in could not be verified.",
        "invalid_request" => {
            "This sign-in could not be completed: it may have been started in another browser or tab, taken too \
             long, or been finished already."
        }
        _ => {
            "The sign-in service is not working as it should. This is not something you can fix: please tell the \
              site's operator."
        }
    }
}

/// The page: what happened, the description (never a secret: see `errors::ErrorBody`), a link to try again from
/// `return_to`, and the code. No script, no style: the guard's strict CSP applies.
fn page(status: StatusCode, code: &str, description: &str, return_to: &str) -> String {
    let retry: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Sign-in failed</title>\n\
         </head>\n<body>\n<main>\n<h1>Sign-in failed</h1>\n<p id=\"headline\">{}</p>\n<p id=\"description\">{}</p>\n\
         <p><a id=\"retry\" href=\"{}?return_to={}\">Try signing in again</a> · <a id=\"back\" href=\"{}\">Back</a></p>\n\
         <p><small>Error <code id=\"code\">{}</code> (HTTP {})</small></p>\n</main>\n</body>\n</html>\n",
        escape(headline(code)),
        escape(description),
        Route::Login.path(),
        escape(&retry),
        escape(return_to),
        escape(code),
        status.as_u16(),
    )
}

/// `text` for HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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
    fn error_paths_are_same_origin_paths() {
        assert_eq!(
            ErrorPath::parse("/signin-error").map(|p| p.0),
            Ok("/signin-error".into())
        );
        assert!(ErrorPath::parse("/app/errors/signin").is_ok());
        for bad in [
            "signin-error",
            "//evil.example",
            "https://evil.example/x",
            "/a?b=c",
            "/a#b",
            "/a/../b",
            "/auth/login",
            "",
        ] {
            assert!(ErrorPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_browser_navigations_to_the_two_sign_in_paths_are_rendered() {
        let nav = headers(&[("sec-fetch-mode", "navigate")]);
        assert!(SignInNavigation::of("/auth/callback", None, &nav).is_some());
        assert!(SignInNavigation::of("/auth/login", Some("return_to=/orders"), &nav).is_some());
        assert!(SignInNavigation::of("/auth/token", None, &nav).is_none());
        assert!(SignInNavigation::of("/", None, &nav).is_none());
        let api = headers(&[("sec-fetch-mode", "cors"), ("accept", "application/json")]);
        assert!(SignInNavigation::of("/auth/callback", None, &api).is_none());
        assert!(SignInNavigation::of("/auth/callback", None, &headers(&[])).is_none());
        let login = SignInNavigation::of("/auth/login", Some("a=1&return_to=%2Forders%3Fx%3D1"), &nav).expect("nav");
        assert_eq!(login.retry.get(), "/orders?x=1");
    }

    #[test]
    fn the_page_escapes_what_it_shows() {
        let html = page(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "<script>alert(1)</script>",
            "/a?b=\"c\"&d",
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{html}");
        assert!(
            html.contains("href=\"/auth/login?return_to=%2Fa%3Fb%3D%22c%22%26d\""),
            "{html}"
        );
        assert!(html.contains("href=\"/a?b=&quot;c&quot;&amp;d\""), "{html}");
    }
}
