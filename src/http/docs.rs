//! `GET /docs`: the Swagger UI page under a Content-Security-Policy that
//! allows only its own inline script and style, by hash.
//!
//! poem-openapi's Swagger UI is one HTML page with its JavaScript and CSS
//! inline, served on the same origin as the session cookie. Allowing inline
//! script there (`'unsafe-inline'`) would let any injected markup run with the
//! session's origin; instead the SHA-256 of each inline `<script>` and
//! `<style>` element is computed once at start-up and listed in the policy, so
//! nothing else runs and the page loads nothing from elsewhere.
//! `AVEMINT_DOCS=off` removes the page (and `/openapi.json`) altogether.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use poem::http::{HeaderValue, header};
use poem::{Endpoint, Request, Response, Result};

/// `GET /openapi.json`: the OpenAPI document, with the proxied routes in use (after any reload) under the `Proxy`
/// tag (`proxy::document_routes`). `avemint openapi` prints the document without routes, as no configuration is
/// read there.
pub(crate) struct SpecEndpoint {
    base: serde_json::Value,
}

impl SpecEndpoint {
    /// Over poem-openapi's document `spec` (JSON).
    pub(crate) fn new(spec: &str) -> Self {
        Self {
            base: serde_json::from_str(spec).unwrap_or_default(),
        }
    }
}

impl Endpoint for SpecEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> Result<Response> {
        let mut doc = self.base.clone();
        if let Some(state) = req.data::<std::sync::Arc<super::AppState>>() {
            super::proxy::document_routes(&mut doc, &state.proxy.routes().current());
        }
        Ok(Response::builder()
            .content_type("application/json")
            .body(doc.to_string()))
    }
}

/// The page and its policy, built once.
pub(crate) struct DocsPage {
    html: String,
    csp: HeaderValue,
}

impl DocsPage {
    /// Renders Swagger UI for `html` (poem-openapi's page) and derives its policy.
    pub(crate) fn new(html: String) -> Self {
        let csp = HeaderValue::from_str(&policy(&html))
            .unwrap_or(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
        Self { html, csp }
    }

    /// The Content-Security-Policy served with the page.
    #[cfg(test)]
    pub(crate) fn csp(&self) -> &HeaderValue {
        &self.csp
    }
}

impl Endpoint for DocsPage {
    type Output = Response;

    async fn call(&self, _req: Request) -> Result<Response> {
        Ok(Response::builder()
            .content_type("text/html; charset=utf-8")
            .header(header::CONTENT_SECURITY_POLICY, self.csp.clone())
            .body(self.html.clone()))
    }
}

/// The policy for `html`: its inline scripts and styles by hash, nothing else.
pub(crate) fn policy(html: &str) -> String {
    let scripts = hashes(html, "script");
    let styles = hashes(html, "style");
    format!(
        "default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' data:; font-src 'self' data:; \
         connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `'sha256-…'` of the text of every `<tag …>…</tag>` element, space-separated (`'none'` if there are none).
fn hashes(html: &str, tag: &str) -> String {
    let list: Vec<String> = inline_elements(html, tag)
        .into_iter()
        .map(|text| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
            format!("'sha256-{}'", STANDARD.encode(digest.as_ref()))
        })
        .collect();
    if list.is_empty() {
        "'none'".into()
    } else {
        list.join(" ")
    }
}

/// The text content of each `<tag …>…</tag>` element (ASCII case-insensitive, as browsers end them at the
/// first `</tag`).
pub fn inline_elements<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{tag}");
    let close = format!("</{tag}");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find(&open).map(|i| at + i) {
        let after_name = start + open.len();
        // `<scripts>` or `<styled>` are other elements.
        if !lower[after_name..].starts_with(|c: char| c == '>' || c.is_ascii_whitespace()) {
            at = after_name;
            continue;
        }
        let Some(body_start) = lower[after_name..].find('>').map(|i| after_name + i + 1) else {
            break;
        };
        let Some(body_end) = lower[body_start..].find(&close).map(|i| body_start + i) else {
            break;
        };
        out.push(&html[body_start..body_end]);
        at = body_end + close.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inline_script_and_style_is_hashed_and_nothing_else_allowed() {
        let html = "<html><STYLE a=b>s1</style><script>x()</script><scripts></scripts>\
                    <script\ttype=module>y()</SCRIPT></html>";
        assert_eq!(inline_elements(html, "script"), vec!["x()", "y()"]);
        assert_eq!(inline_elements(html, "style"), vec!["s1"]);
        let p = policy(html);
        assert!(p.contains("script-src 'sha256-"), "{p}");
        assert_eq!(p.matches("'sha256-").count(), 3, "{p}");
        assert!(!p.contains("unsafe"), "{p}");
        assert!(p.contains("frame-ancestors 'none'") && p.contains("default-src 'none'"));
        assert!(policy("<p>no script</p>").contains("script-src 'none'"));
    }

    #[test]
    fn the_swagger_ui_page_gets_one_hash_per_inline_element() {
        let html = crate::http::openapi_service().swagger_ui_html();
        let scripts = inline_elements(&html, "script");
        assert!(scripts.len() >= 2, "bundle and bootstrap");
        assert!(!html.to_ascii_lowercase().contains("<script src"), "nothing external");
        let page = DocsPage::new(html.clone());
        let csp = page.csp().to_str().expect("ascii");
        assert_eq!(csp.matches("'sha256-").count(), scripts.len() + 1);
    }
}
