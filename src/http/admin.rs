//! The admin API: operators list and end users' sessions and read session
//! counts. Off by default; served only on its own listener
//! (`AVEMINT_ADMIN_LISTEN`), never on the public one, behind a bearer token
//! (`AVEMINT_ADMIN_TOKEN` / `_FILE`) compared in constant time. It has its own
//! OpenAPI document (`avemint openapi --admin`, `openapi/admin.yaml`).
//!
//! Why a separate listener: the public port faces browsers and the internet;
//! the admin API must be reachable only where operators are (loopback, a
//! private network), which a bind address says better than any path rule.
//! The token is checked in front of the router, so without it every path,
//! known or not, is the same 401 and the API's shape is not revealed.
//! The work itself is `session::manage`, shared with the users' endpoints.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use poem::http::{HeaderValue, header};
use poem::web::Data;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use poem_openapi::auth::Bearer;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, OpenApiService, SecurityScheme, Tags};

use super::AppState;
use super::errors::{self, Answers, Audit, Audited, ErrorBody, error_body};
use super::session_view::SessionView;
use avemint_base::route::AdminRoute;
use avemint_base::secret::Credential;
use avemint_core::session::{SessionCounts, SessionHandle, StoreError};
use avemint_core::traffic::rate_limit::{CredentialEndpoint, CredentialLimiter, CredentialVerdict};

/// Shortest admin token accepted (`openssl rand -hex 32` gives 64 characters).
pub(crate) const MIN_TOKEN_LEN: usize = 32;

/// Where the admin API listens and the token it requires. `None` in `Settings`: no admin API.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// `AVEMINT_ADMIN_LISTEN`.
    pub listen: SocketAddr,
    /// `AVEMINT_ADMIN_TOKEN` / `AVEMINT_ADMIN_TOKEN_FILE`.
    pub token: AdminToken,
}

/// The admin bearer token, kept as a `Credential` (its SHA-256; a presented token is compared digest to digest
/// in constant time, so the comparison reveals neither content nor length).
#[derive(Clone)]
pub struct AdminToken {
    credential: Credential,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// Why an admin token was refused (never echoes it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminTokenError {
    #[error("must be at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)")]
    TooShort,
    #[error("must be visible ASCII characters only (it is sent in an HTTP header)")]
    NotVisibleAscii,
}

impl AdminToken {
    /// At least `MIN_TOKEN_LEN` visible ASCII characters.
    pub(crate) fn parse(raw: &str) -> Result<Self, AdminTokenError> {
        let raw = raw.trim();
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError::NotVisibleAscii);
        }
        if raw.len() < MIN_TOKEN_LEN {
            return Err(AdminTokenError::TooShort);
        }
        Ok(Self {
            credential: Credential::new(raw),
        })
    }

    /// True when `presented` is the token (constant time over the digests).
    fn matches(&self, presented: &str) -> bool {
        self.credential.matches(presented)
    }
}

/// Documents the bearer token in the admin OpenAPI document. The token itself is checked in front of the
/// router (see `routes`), for every path.
#[derive(SecurityScheme)]
#[oai(ty = "bearer")]
// Its value is not read: the check in front of the router has compared it already.
#[allow(dead_code)]
pub(crate) struct AdminBearer(Bearer);

/// OpenAPI tags of the admin document.
#[derive(Tags)]
enum AdminTags {
    /// Users' sessions and session counts, for operators.
    Admin,
}

/// The admin endpoints.
pub(crate) struct AdminApi;

/// Every error the admin API answers with.
#[derive(Debug, ApiResponse)]
#[oai(bad_request_handler = "bad_request")]
pub(crate) enum AdminError {
    /// The request is malformed (`invalid_request`).
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// No bearer token, or not the admin token (`invalid_token`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// No such session (`not_found`).
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
    /// A wrong token again after the client's network (IPv4 /24, IPv6 /64 and /48) sent 20 wrong ones within a
    /// minute (`rate_limited`, with `Retry-After`): until they age out. The right token is never limited.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
    /// The session store is unreachable right now (`temporarily_unavailable`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] Option<String>),
}

fn bad_request(err: poem::Error) -> AdminError {
    AdminError::BadRequest(error_body("invalid_request", err.to_string()))
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        e.log("admin");
        AdminError::Unavailable(
            error_body("temporarily_unavailable", e.public_reason()),
            Some("5".into()),
        )
    }
}

/// A user's sessions.
#[derive(Object)]
pub(crate) struct AdminSessions {
    /// Most recently used first. Sessions written before the per-user index existed are not listed.
    pub sessions: Vec<SessionView>,
}

/// How many sessions were ended.
#[derive(Object)]
pub(crate) struct Ended {
    pub ended: u64,
}

/// Live sessions in the store.
#[derive(Object)]
pub(crate) struct SessionStats {
    /// Every live session (all instances: the count is the store's).
    pub total: u64,
    /// Of those, signed in during the last hour.
    pub created_last_hour: u64,
    /// Of those, signed in during the last 24 hours.
    pub created_last_day: u64,
    /// Of those, used during the last hour (activity is recorded at most once a minute).
    pub active_last_hour: u64,
}

impl From<SessionCounts> for SessionStats {
    fn from(c: SessionCounts) -> Self {
        Self {
            total: c.total,
            created_last_hour: c.created_last_hour,
            created_last_day: c.created_last_day,
            active_last_hour: c.active_last_hour,
        }
    }
}

/// `GET /admin/stats`.
#[derive(Object)]
pub(crate) struct Stats {
    pub sessions: SessionStats,
}

/// Ending one session.
#[derive(ApiResponse)]
pub(crate) enum EndResponse {
    /// Ended.
    #[oai(status = 204)]
    Done,
}

#[OpenApi(prefix_path = "/admin", tag = "AdminTags::Admin")]
impl AdminApi {
    /// A user's sessions.
    ///
    /// `sub` is Ave's subject identifier of the user. The store indexes sessions by a keyed hash of it, so
    /// nothing in the database names the user.
    #[oai(path = "/users/:sub/sessions", method = "get")]
    async fn user_sessions(
        &self,
        state: Data<&Arc<AppState>>,
        _auth: AdminBearer,
        /// Ave's `sub` of the user.
        sub: Path<String>,
    ) -> Result<Json<AdminSessions>, AdminError> {
        let listed = state.sessions.list_of(&sub.0).await?;
        Ok(Json(AdminSessions {
            sessions: listed.into_iter().map(SessionView::from).collect(),
        }))
    }

    /// End every session of a user ("log out everywhere").
    ///
    /// Answers how many ended (0 for a user without sessions). Other instances stop serving them within
    /// their session cache time (`AVEMINT_SESSION_CACHE_TTL_MS`).
    #[oai(path = "/users/:sub/sessions", method = "delete")]
    async fn end_user_sessions(
        &self,
        state: Data<&Arc<AppState>>,
        _auth: AdminBearer,
        /// Ave's `sub` of the user.
        sub: Path<String>,
    ) -> Result<Json<Ended>, AdminError> {
        let ended = state.sessions.end_all_of(&sub.0, None).await?;
        tracing::info!(ended, "admin API: ended a user's sessions");
        Ok(Json(Ended { ended: ended as u64 }))
    }

    /// End one session by its id (the `sid` of its app JWTs).
    ///
    /// 404 when no session has this id. Sessions signed in before the sid index existed are found only
    /// through their user (`DELETE /admin/users/{sub}/sessions`).
    #[oai(path = "/sessions/:id", method = "delete")]
    async fn end_session(
        &self,
        state: Data<&Arc<AppState>>,
        _auth: AdminBearer,
        /// The session's id (its `sid`).
        id: Path<String>,
    ) -> Result<EndResponse, AdminError> {
        let not_found = || AdminError::NotFound(error_body("not_found", "no session has this id"));
        let sid = SessionHandle::parse(&id.0).ok_or_else(not_found)?;
        if !state.sessions.end_by_sid(&sid).await? {
            return Err(not_found());
        }
        tracing::info!(sid = sid.as_str(), "admin API: ended a session");
        Ok(EndResponse::Done)
    }

    /// Session counts.
    ///
    /// Live sessions in the store (shared by every instance): in all, signed in during the last hour and
    /// day, and used during the last hour. One counting query.
    #[oai(path = "/stats", method = "get")]
    async fn stats(&self, state: Data<&Arc<AppState>>, _auth: AdminBearer) -> Result<Json<Stats>, AdminError> {
        let counts = state.sessions.counts().await?;
        Ok(Json(Stats {
            sessions: counts.into(),
        }))
    }
}

/// What each admin operation can answer besides success (see `errors::audit`): only ending one session by its id
/// can be 404.
pub(crate) const ANSWERS: &[Answers] = &[
    Answers {
        method: "GET",
        path: "/admin/users/{sub}/sessions",
        errors: &[(400, ""), (401, ""), (429, ""), (503, "")],
    },
    Answers {
        method: "DELETE",
        path: "/admin/users/{sub}/sessions",
        errors: &[(400, ""), (401, ""), (429, ""), (503, "")],
    },
    Answers {
        method: "DELETE",
        path: "/admin/sessions/{id}",
        errors: &[
            (400, ""),
            (401, ""),
            (404, "No session has this id, or it is malformed (`not_found`)."),
            (429, ""),
            (503, ""),
        ],
    },
    Answers {
        method: "GET",
        path: "/admin/stats",
        errors: &[(401, ""), (429, ""), (503, "")],
    },
];

impl Audit for AdminApi {
    const ANSWERS: &'static [Answers] = ANSWERS;
}

/// The admin OpenAPI service (also used by `avemint openapi --admin`; needs no running state).
pub(crate) fn openapi_service() -> OpenApiService<Audited<AdminApi>, ()> {
    OpenApiService::new(Audited(AdminApi), "avemint admin API", env!("CARGO_PKG_VERSION")).description(
        "Operators' API of avemint: users' sessions and session counts. Served only on `AVEMINT_ADMIN_LISTEN` \
         (never on the public listener), every request with `Authorization: Bearer <AVEMINT_ADMIN_TOKEN>`; \
         without it, or with another token, every path is 401 with `WWW-Authenticate: Bearer`. Every JSON error \
         is `{error, error_description}`.",
    )
}

/// The admin OpenAPI document as YAML (what `openapi/admin.yaml` holds).
pub fn openapi_yaml() -> String {
    openapi_service().spec_yaml()
}

/// 401 with `WWW-Authenticate: Bearer`, as JSON; 429 once the client's network sent too many wrong tokens
/// (`CredentialLimiter`).
async fn unauthorized(limiter: &CredentialLimiter, req: &Request) -> Response {
    let client = req
        .remote_addr()
        .as_socket_addr()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    match limiter.failed(client).await {
        CredentialVerdict::Rejected => AdminError::Unauthorized(
            error_body(
                "invalid_token",
                "the admin API needs `Authorization: Bearer <admin token>`",
            ),
            "Bearer".into(),
        ),
        CredentialVerdict::Limited(retry_after) => AdminError::TooManyRequests(
            error_body(
                "rate_limited",
                "too many wrong admin tokens from this network; try again later",
            ),
            retry_after.as_secs().to_string(),
        ),
    }
    .into_response()
}

/// The bearer token of `req`, if it sent one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The path as logged: its template in the admin route table, so a user's `sub` and a session id are left out.
fn path_template(path: &str) -> &'static str {
    AdminRoute::of(path).map_or("other", AdminRoute::path)
}

/// The admin listener's application: the token check, then the admin API; errors as JSON, answers never cached.
pub(crate) fn routes(state: Arc<AppState>, token: AdminToken) -> impl Endpoint + 'static {
    let token = Arc::new(token);
    let limiter = Arc::new(CredentialLimiter::new(CredentialEndpoint::Admin));
    poem::Route::new()
        .nest("/", openapi_service())
        .data(state)
        .catch_all_error(errors::catch_all)
        .around(move |ep, req| {
            let (token, limiter) = (token.clone(), limiter.clone());
            async move {
                let method = req.method().clone();
                let path = path_template(req.uri().path());
                let mut resp = match bearer(&req) {
                    Some(presented) if token.matches(presented) => match ep.call(req).await {
                        Ok(r) => r.into_response(),
                        Err(e) => errors::catch_all(e).await,
                    },
                    _ => unauthorized(&limiter, &req).await,
                };
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                let status = resp.status().as_u16();
                tracing::info!(target: "avemint::access", %method, %path, status, listener = "admin", "request");
                Ok(resp)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_visible_ascii_and_compared_whole() {
        assert_eq!(
            AdminToken::parse(&"a".repeat(31)).err(),
            Some(AdminTokenError::TooShort)
        );
        assert_eq!(
            AdminToken::parse(&format!("{} b", "a".repeat(40))).err(),
            Some(AdminTokenError::NotVisibleAscii)
        );
        let token = AdminToken::parse(&"a".repeat(32)).expect("token");
        assert!(token.matches(&"a".repeat(32)));
        assert!(!token.matches(&"a".repeat(33)));
        assert!(!token.matches(&"a".repeat(31)));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("aaaa"));
    }

    /// The OpenAPI macros spell their paths as literals: each must be the admin route table's, and every route
    /// in the table served.
    #[test]
    fn the_admin_document_and_the_admin_route_table_agree() {
        let paths: Vec<String> = AdminApi::meta()
            .into_iter()
            .flat_map(|api| api.paths)
            .map(|p| p.path)
            .collect();
        for path in &paths {
            assert_eq!(AdminRoute::of(path).map(AdminRoute::path), Some(path.as_str()));
        }
        for route in AdminRoute::ALL {
            assert!(paths.iter().any(|p| p == route.path()), "{route:?}");
        }
    }

    #[test]
    fn logged_paths_leave_the_sub_and_the_session_id_out() {
        for (path, logged) in [
            ("/admin/users/248289761001/sessions", "/admin/users/{sub}/sessions"),
            ("/admin/users/x/anything", "/admin/users/{sub}/sessions"),
            ("/admin/sessions/AbC-_1", "/admin/sessions/{id}"),
            ("/admin/stats", "/admin/stats"),
            ("/admin/stats/", "other"),
            ("/admin/users", "other"),
            ("/secret-looking-path", "other"),
        ] {
            assert_eq!(path_template(path), logged, "{path}");
        }
    }
}
