//! `GET /signin` (Ave's authorization page) and `POST /signin/decide` (where
//! the page's forms go). Field names are documented in the module docs of
//! `emulator`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Request, Response};

use super::scopes::{has_scope, is_scope_allowed, parse_scopes};
use super::state::{CodeRecord, deadline};
use super::{EmulatedUser, Shared, crypto};

/// Scope used when the request has none (Ave's UI default).
const DEFAULT_SCOPE: &str = "openid profile email";
/// Authorization-code lifetime (fixed in Ave).
const CODE_TTL: Duration = Duration::from_secs(600);
/// Largest form body read by `/signin/decide`.
const FORM_LIMIT: usize = 64 * 1024;
const TITLE: &str = "Ave emulator (local demo \u{2014} not the real Ave)";

/// The authorization request as carried in the query or the hidden fields.
#[derive(Debug, Default)]
struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    code_challenge_method: String,
    prompt: String,
    resource: bool,
    user_id: String,
    decision: String,
}

impl AuthRequest {
    /// Reads `application/x-www-form-urlencoded` pairs; the first occurrence
    /// of a name wins (`URLSearchParams.get`).
    fn parse(encoded: &[u8]) -> AuthRequest {
        let mut request = AuthRequest::default();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in url::form_urlencoded::parse(encoded) {
            if seen.iter().any(|s| *s == name) {
                continue;
            }
            seen.push(name.to_string());
            let slot = match name.as_ref() {
                "client_id" => &mut request.client_id,
                "redirect_uri" => &mut request.redirect_uri,
                "scope" => &mut request.scope,
                "state" => &mut request.state,
                "nonce" => &mut request.nonce,
                "code_challenge" => &mut request.code_challenge,
                "code_challenge_method" => &mut request.code_challenge_method,
                "prompt" => &mut request.prompt,
                "user_id" => &mut request.user_id,
                "decision" => &mut request.decision,
                "resource" => {
                    request.resource = true;
                    continue;
                }
                _ => continue,
            };
            *slot = value.into_owned();
        }
        request
    }

    /// The scope string in effect (the UI default when absent or empty).
    fn effective_scope(&self) -> &str {
        if self.scope.is_empty() {
            DEFAULT_SCOPE
        } else {
            &self.scope
        }
    }

    /// Only the exact strings `S256` and `plain` are kept.
    fn method(&self) -> Option<String> {
        matches!(self.code_challenge_method.as_str(), "S256" | "plain").then(|| self.code_challenge_method.clone())
    }

    /// `prompt=consent` / `select_account` force the interactive screen.
    fn forces_screen(&self) -> bool {
        self.prompt.split(' ').any(|p| p == "consent" || p == "select_account")
    }
}

/// An error shown on the Ave page (never redirected to the client).
struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    fn bad_request(message: impl Into<String>) -> PageError {
        PageError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

/// What Ave's internal authorize API checks: client, redirect URI, scopes.
/// Returns the WHATWG-normalised redirect URI.
fn validate(shared: &Shared, request: &AuthRequest) -> Result<String, PageError> {
    if request.resource {
        return Err(PageError::bad_request(
            "This request has a resource parameter, which starts Ave's Connector delegation \
             flow; the Ave emulator does not support it.",
        ));
    }
    if request.client_id.is_empty() {
        return Err(PageError::bad_request("Missing client_id parameter"));
    }
    if request.client_id != shared.config.client_id {
        return Err(PageError::bad_request("Invalid client_id"));
    }
    let normalised = url::Url::parse(&request.redirect_uri)
        .map(|u| u.to_string())
        .map_err(|_| PageError::bad_request("Invalid redirect_uri"))?;
    if !shared.lock().redirect_uris.contains(&normalised) {
        return Err(PageError::bad_request("Invalid redirect_uri"));
    }
    let scopes = parse_scopes(request.effective_scope());
    if let Some(pqc) = scopes.iter().find(|s| s.starts_with("e2ee:pqc:")) {
        return Err(PageError::bad_request(format!("Scope {pqc} is not implemented")));
    }
    let invalid: Vec<&str> = scopes.into_iter().filter(|s| !is_scope_allowed(s)).collect();
    if !invalid.is_empty() {
        return Err(PageError::bad_request(format!(
            "Invalid scopes: {}",
            invalid.join(", ")
        )));
    }
    Ok(normalised)
}

/// `GET /signin`.
pub(super) fn page(shared: &Shared, req: &Request) -> Response {
    let request = AuthRequest::parse(req.uri().query().unwrap_or_default().as_bytes());
    let normalised = match validate(shared, &request) {
        Ok(normalised) => normalised,
        Err(error) => return error_page(&error),
    };
    let auto_approve = shared.lock().auto_approve.clone();
    match auto_approve {
        Some(user_id) if !request.forces_screen() => approve(shared, &request, &normalised, &user_id),
        _ => consent_page(shared, &request),
    }
}

/// `POST /signin/decide`.
pub(super) async fn decide(shared: &Shared, mut req: Request) -> Response {
    let Ok(body) = req.take_body().into_bytes_limit(FORM_LIMIT).await else {
        return error_page(&PageError::bad_request("Unreadable form"));
    };
    let request = AuthRequest::parse(&body);
    let normalised = match validate(shared, &request) {
        Ok(normalised) => normalised,
        Err(error) => return error_page(&error),
    };
    match request.decision.as_str() {
        "approve" => approve(shared, &request, &normalised, &request.user_id),
        "deny" => {
            let mut pairs = vec![("error", "access_denied")];
            if !request.state.is_empty() {
                pairs.push(("state", request.state.as_str()));
            }
            redirect(&request.redirect_uri, &pairs)
        }
        _ => error_page(&PageError::bad_request("decision must be \"approve\" or \"deny\"")),
    }
}

/// Issues a code for `user_id` and redirects to the client.
fn approve(shared: &Shared, request: &AuthRequest, normalised: &str, user_id: &str) -> Response {
    let Some(user) = shared.user(user_id) else {
        return error_page(&PageError::bad_request("Invalid identity"));
    };
    let scope = request.effective_scope();
    if has_scope(scope, "email") && user.email.as_deref().is_none_or(str::is_empty) {
        return error_page(&PageError {
            status: StatusCode::CONFLICT,
            message: "Add a verified email before continuing".to_owned(),
        });
    }
    let Ok(code) = crypto::random_token43() else {
        return error_page(&PageError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Internal Server Error".to_owned(),
        });
    };
    let now = Instant::now();
    {
        let mut state = shared.lock();
        state.prune(now);
        state.codes.insert(
            crypto::sha256_hex(&code),
            CodeRecord {
                client_id: request.client_id.clone(),
                redirect_uri: normalised.to_owned(),
                user_id: user.id.clone(),
                scope: scope.to_owned(),
                nonce: Some(request.nonce.clone()).filter(|n| !n.is_empty()),
                code_challenge: Some(request.code_challenge.clone()).filter(|c| !c.is_empty()),
                code_challenge_method: request.method(),
                expires_at: deadline(now, CODE_TTL),
            },
        );
    }
    let mut pairs = vec![("code", code.as_str())];
    if !request.state.is_empty() {
        pairs.push(("state", request.state.as_str()));
    }
    redirect(&request.redirect_uri, &pairs)
}

/// 302 to `base` with each pair applied with URLSearchParams-`set` semantics:
/// the first existing pair of that name gets the value, later duplicates are
/// removed, otherwise the pair is appended.
fn redirect(base: &str, pairs: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(base) else {
        return error_page(&PageError::bad_request("Invalid redirect_uri"));
    };
    let mut query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (name, value) in pairs {
        match query.iter().position(|(k, _)| k == name) {
            Some(first) => {
                query[first].1 = (*value).to_owned();
                let mut index = 0;
                query.retain(|(k, _)| {
                    let keep = index == first || k != name;
                    index += 1;
                    keep
                });
            }
            None => query.push(((*name).to_owned(), (*value).to_owned())),
        }
    }
    url.query_pairs_mut().clear().extend_pairs(query);
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return error_page(&PageError::bad_request("Invalid redirect_uri"));
    };
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, location)
        .header(header::CACHE_CONTROL, "no-store")
        .finish()
}

/// Escapes text for HTML element content and double- or single-quoted
/// attribute values.
pub(super) fn html_escape(text: &str) -> String {
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

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;\
padding:0 1rem;color:#1d1d1f}h1{font-size:1.3rem}.note{background:#fff4d6;border:1px solid #e0b94d;\
padding:.6rem .8rem;border-radius:.4rem;font-size:.9rem}code{background:#f2f2f2;padding:0 .2rem}\
form{margin:.6rem 0}button{font-size:1rem;padding:.6rem 1rem;width:100%;cursor:pointer;\
border-radius:.4rem;border:1px solid #888;background:#fff}button.approve{background:#1d1d1f;\
color:#fff}small{color:#666}";

fn html_page(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{title}</title><style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>\n",
        title = html_escape(TITLE),
    );
    Response::builder()
        .status(status)
        .content_type("text/html; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        )
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(html)
}

fn error_page(error: &PageError) -> Response {
    html_page(
        error.status,
        &format!(
            "<p class=\"note\">This is a local emulator of Ave for development and demos.</p>\
<p><strong>{}</strong></p><p>Nothing was sent back to the application.</p>",
            html_escape(&error.message)
        ),
    )
}

/// The hidden fields carrying the request.
fn hidden_fields(request: &AuthRequest, user_id: &str, decision: &str) -> String {
    let method = request.method().unwrap_or_default();
    let fields = [
        ("client_id", request.client_id.as_str()),
        ("redirect_uri", request.redirect_uri.as_str()),
        ("scope", request.effective_scope()),
        ("state", request.state.as_str()),
        ("nonce", request.nonce.as_str()),
        ("code_challenge", request.code_challenge.as_str()),
        ("code_challenge_method", method.as_str()),
        ("user_id", user_id),
        ("decision", decision),
    ];
    let mut html = String::new();
    for (name, value) in fields {
        let _ = write!(
            html,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            html_escape(value)
        );
    }
    html
}

fn user_form(request: &AuthRequest, user: &EmulatedUser) -> String {
    let detail = match &user.email {
        Some(email) => format!("@{} \u{b7} {}", user.handle, email),
        None => format!("@{}", user.handle),
    };
    format!(
        "<form method=\"post\" action=\"/signin/decide\">{}<button class=\"approve\" type=\"submit\">\
Sign in as {}</button><br><small>{}</small></form>",
        hidden_fields(request, &user.id, "approve"),
        html_escape(&user.display_name),
        html_escape(&detail),
    )
}

fn consent_page(shared: &Shared, request: &AuthRequest) -> Response {
    let mut body = String::from(
        "<p class=\"note\">This is a local emulator of Ave for development and demos. \
No real account is involved.</p>",
    );
    let _ = write!(
        body,
        "<p>The application <code>{}</code> asks to sign you in with these scopes:</p><ul>",
        html_escape(&request.client_id)
    );
    for scope in parse_scopes(request.effective_scope()) {
        let _ = write!(body, "<li><code>{}</code></li>", html_escape(scope));
    }
    body.push_str("</ul>");
    for user in &shared.config.users {
        body.push_str(&user_form(request, user));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/signin/decide\">{}<button type=\"submit\">Deny</button></form>",
        hidden_fields(request, "", "deny")
    );
    html_page(StatusCode::OK, &body)
}
