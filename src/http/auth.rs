//! `/auth/*`: the browser-facing sign-in, session and token endpoints.

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde_json::Value;

use super::cookies::{self, CookieChanges, Sent, SessionCookie};
use super::errors::{ApiError, ErrorBody};
use super::optional_json::OptionalJson;
use super::prepared_json::PreparedJson;
use super::{ApiTags, AppState};
use crate::ave::AveError;
use crate::clock::UnixTime;
use crate::mint::profiles::SelectError;
use crate::mint::{MintError, MintedToken, Subject};
use crate::session::{
    RenewError, Sealer, Session, SessionHandle, SessionRowHash, SessionSummary, SignedInFrom, StoreError,
};
use crate::signin::{
    Callback, Completed, PendingLogin, PendingLoginError, ReturnPath, SignIn, SignInError, decode_login, encode_login,
};
use crate::traffic::client_ip::ClientIp;
use crate::traffic::device;

/// The auth endpoints.
pub(crate) struct AuthApi;

/// Redirect to Ave's sign-in page.
#[derive(ApiResponse)]
pub(crate) enum LoginResponse {
    /// Redirect to Ave's authorization endpoint. Sets the `__Host-avemint-login` cookie.
    #[oai(status = 302)]
    Redirect(#[oai(header = "Location")] String),
}

/// The end of a sign-in.
#[derive(ApiResponse)]
pub(crate) enum CallbackResponse {
    /// Signed in: redirect to the return path. Sets the `__Host-avemint` session cookie and expires the login cookie.
    #[oai(status = 302)]
    Redirect(#[oai(header = "Location")] String),
    /// Nothing was sent to Ave (`rate_limited`): too many code exchanges from the client's network failed
    /// recently, or too many sign-in requests came from this client (`AVEMINT_LOGIN_RATE_LIMIT`). Start the
    /// sign-in again after `Retry-After` seconds.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
}

impl CallbackResponse {
    /// 429: the client's network failed too many code exchanges.
    fn network_refused(retry_after_secs: u64) -> Self {
        Self::TooManyRequests(
            Json(ErrorBody {
                error: "rate_limited".into(),
                error_description: format!(
                    "too many failed sign-ins from this network; start again in {retry_after_secs} s"
                ),
            }),
            retry_after_secs.to_string(),
        )
    }
}

/// An app JWT for the signed-in user.
#[derive(Object)]
pub(crate) struct TokenBody {
    /// The signed app JWT (ES256, header `typ: at+jwt`).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds.
    pub expires_in: u64,
}

/// `TokenBody` by reference, field for field.
#[derive(serde::Serialize)]
struct TokenView<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

/// The 200 answer of `POST /auth/token`, serialized straight from the minted
/// token (see `PreparedJson`). A compact JWS is base64url and dots only, which
/// JSON never escapes, so it is copied as is; anything that would need escaping
/// (never produced by the signer) goes through serde_json.
fn token_answer(minted: &MintedToken) -> Result<PreparedJson<TokenBody>, serde_json::Error> {
    let token = minted.token.expose();
    // Not short-circuiting, so the compiler can check many bytes at once.
    let needs_escaping = token
        .bytes()
        .fold(false, |found, b| found | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if needs_escaping {
        return PreparedJson::serialize(&TokenView {
            access_token: token,
            token_type: "Bearer",
            expires_in: minted.expires_in,
        });
    }
    let mut body = Vec::with_capacity(token.len() + 80);
    body.extend_from_slice(br#"{"access_token":""#);
    body.extend_from_slice(token.as_bytes());
    body.extend_from_slice(br#"","token_type":"Bearer","expires_in":"#);
    body.extend_from_slice(minted.expires_in.to_string().as_bytes());
    body.push(b'}');
    Ok(PreparedJson::from_bytes(body.into()))
}

/// Which app JWT to mint. Send one of the two, or no body for the default profile.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    /// The audience (downstream API) the token is for, exactly as configured in a profile.
    pub audience: Option<String>,
    /// The name of a configured token profile.
    pub profile: Option<String>,
}

/// The signed-in user's profile; no tokens.
#[derive(Object)]
pub(crate) struct SessionBody {
    /// Ave's subject identifier (identity UUID).
    pub sub: String,
    /// Display name (`profile` scope).
    #[oai(skip_serializing_if_is_none)]
    pub name: Option<String>,
    /// Ave handle (`profile` scope).
    #[oai(skip_serializing_if_is_none)]
    pub preferred_username: Option<String>,
    /// Verified email (`email` scope).
    #[oai(skip_serializing_if_is_none)]
    pub email: Option<String>,
    /// Avatar URL (`profile` scope).
    #[oai(skip_serializing_if_is_none)]
    pub picture: Option<String>,
    /// When the session ends unless renewed by activity (unix seconds).
    pub expires_at: i64,
    /// Seconds until then: the session ends by its lifetime or its idle timeout, whichever is first (activity
    /// moves the idle end forward).
    pub expires_in: u64,
}

/// The signed-in user's sessions.
#[derive(Object)]
pub(crate) struct SessionsBody {
    /// Most recently used first.
    pub sessions: Vec<SessionItem>,
}

/// One session as the session lists show it (the user's own, and the admin API's). Times are unix seconds.
#[derive(Object)]
pub(crate) struct SessionView {
    /// The session's id: the `sid` claim of its app JWTs, and what ends the session.
    pub id: String,
    /// When it was signed in.
    pub created_at: i64,
    /// When it was last used (recorded at most once a minute).
    pub last_seen_at: i64,
    /// When it ends unless used again (lifetime or idle timeout, whichever is first).
    pub expires_at: i64,
    /// Browser and operating system at sign-in, e.g. `Firefox on Linux`; absent when unknown or signed in
    /// before this was recorded.
    #[oai(skip_serializing_if_is_none)]
    pub device: Option<String>,
    /// The network signed in from: the client address's IPv4 /24 or IPv6 /48, e.g. `198.51.100.0/24`; absent
    /// when signed in before this was recorded.
    #[oai(skip_serializing_if_is_none)]
    pub network: Option<String>,
}

impl From<SessionSummary> for SessionView {
    fn from(s: SessionSummary) -> Self {
        Self {
            id: s.sid.as_str().to_owned(),
            created_at: s.created_at.as_secs(),
            last_seen_at: s.last_seen_at.as_secs(),
            expires_at: s.expires_at.as_secs(),
            device: s.signed_in_from.device,
            network: s.signed_in_from.network,
        }
    }
}

/// One session of the signed-in user; its `id` is what `DELETE /auth/sessions/{id}` takes.
#[derive(Object)]
pub(crate) struct SessionItem {
    #[oai(flatten)]
    pub session: SessionView,
    /// True for the session making this request.
    pub current: bool,
}

impl SessionItem {
    fn of(s: SessionSummary, current: &SessionRowHash) -> Self {
        Self {
            current: s.key == *current,
            session: s.into(),
        }
    }
}

/// Which sessions `POST /auth/logout` ends.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "lowercase")]
pub(crate) enum LogoutScope {
    /// Every session of this user but this one (this one stays signed in).
    Others,
    /// Every session of this user, this one included.
    All,
}

/// What to sign out of. No body (or no `scope`) signs out of this session only.
#[derive(Object)]
#[oai(deny_unknown_fields)]
pub(crate) struct LogoutRequest {
    /// `others` or `all`.
    pub scope: Option<LogoutScope>,
}

/// Ending one session.
#[derive(ApiResponse)]
pub(crate) enum EndSessionResponse {
    /// Ended. When it was the caller's own session, its cookie is expired too.
    #[oai(status = 204)]
    Done,
    /// The signed-in user has no session with this id (`not_found`): unknown, malformed, already ended, or
    /// another user's.
    #[oai(status = 404)]
    NotFound(Json<ErrorBody>),
}

/// Logout result.
#[derive(ApiResponse)]
pub(crate) enum LogoutResponse {
    /// Signed out; the session cookie is expired (with `scope: others`, kept: this session stays).
    #[oai(status = 204)]
    Done,
}

/// The `X-CSRF` value that proves a request came from script on an allowed page.
pub(super) const CSRF_VALUE: &str = "1";

fn require_csrf(csrf: &Header<Option<String>>) -> Result<(), ApiError> {
    match csrf.0.as_deref() {
        Some(CSRF_VALUE) => Ok(()),
        _ => Err(ApiError::csrf()),
    }
}

/// The description of every `invalid_target` answer of `POST /auth/token`.
const NOT_MINTABLE: &str = "no token profile page script may mint has this name or audience (a proxied route's profile needs `browser = true`)";

fn store_unavailable(e: StoreError) -> ApiError {
    e.log("request");
    ApiError::unavailable(e.public_reason(), 5)
}

fn ave_unavailable(e: &AveError) -> ApiError {
    match e {
        AveError::RateLimited { retry_after } => ApiError::unavailable(
            "Ave is busy; try again shortly",
            retry_after.map_or(10, |d| d.as_secs().max(1)),
        ),
        // avemint's own budget: answered like Ave's rate limit, with when room frees up.
        AveError::BudgetExhausted { retry_after } | AveError::HeldBack { retry_after, .. } => {
            ApiError::unavailable("Ave is busy; try again shortly", retry_after.as_secs().max(1))
        }
        e if e.is_transient() => ApiError::unavailable("Ave cannot be reached right now", 5),
        _ => ApiError::bad_gateway("Ave answered in an unexpected way"),
    }
}

impl From<SignInError> for ApiError {
    fn from(e: SignInError) -> Self {
        let description = e.to_string();
        match e {
            SignInError::MissingParameter(_)
            | SignInError::MalformedParameter(_)
            | SignInError::StateMismatch
            | SignInError::StateReplayed
            | SignInError::ProviderError => ApiError::invalid_request(description),
            SignInError::AccessDenied => ApiError::forbidden("access_denied", description),
            SignInError::CodeRejected(_) => ApiError::bad_request("invalid_grant", description),
            SignInError::IdToken(crate::ave::IdTokenError::Keys(ref ave)) => ave_unavailable(ave),
            SignInError::IdToken(_) => ApiError::bad_request("invalid_token", description),
            SignInError::NoIdToken => ApiError::bad_gateway(description),
            SignInError::Ave(ref ave) => ave_unavailable(ave),
            SignInError::Store(e) => store_unavailable(e),
        }
    }
}

impl AppState {
    /// The sign-in flow over this service's Ave client, store and limiter.
    fn sign_in(&self) -> SignIn<'_> {
        SignIn {
            ave: &self.ave,
            sessions: &self.sessions,
            limiter: &self.sign_in_limiter,
            redirect_uri: &self.redirect_uri,
            scopes: &self.scopes,
        }
    }
}

/// Opens the pending sign-in the request's `__Host-avemint-login` cookie carries.
fn pending_login(req: &Request, sealer: &Sealer, now: UnixTime) -> Result<PendingLogin, PendingLoginError> {
    match cookies::login_cookie(req.headers()) {
        Sent::Absent => Err(PendingLoginError::Missing),
        Sent::Ambiguous => Err(PendingLoginError::Ambiguous),
        Sent::Once(raw) => {
            let value = std::str::from_utf8(raw).map_err(|_| PendingLoginError::Invalid)?;
            decode_login(value, sealer, now)
        }
    }
}

impl From<SelectError> for ApiError {
    fn from(e: SelectError) -> Self {
        if e.is_invalid_target() {
            // One answer for an unknown profile or audience and one page script may not mint (a proxied route's):
            // script cannot tell which exist.
            ApiError::forbidden("invalid_target", NOT_MINTABLE)
        } else {
            ApiError::invalid_request(e.to_string())
        }
    }
}

impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::Keys(_) | MintError::ClaimsEncoding => ApiError::unavailable("token signing failed", 1),
            MintError::Hook { profile, .. } => ApiError::unavailable(
                format!("the claims hook of token profile `{profile}` is unavailable; try again shortly"),
                5,
            ),
            e @ MintError::TooLarge { .. } => {
                tracing::error!(error = %e, "app JWT over the size limit; reduce the profile's claims or raise max_token_bytes");
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// The session the request's `__Host-avemint` cookie names. A cookie that names no live session (malformed, sent
/// twice, unknown or ended) is expired along with the 401.
pub(super) async fn current_session(
    state: &AppState,
    req: &Request,
    changes: &CookieChanges,
) -> Result<Arc<Session>, ApiError> {
    let id = match cookies::session_cookie(req.headers()) {
        SessionCookie::Absent => return Err(ApiError::login_required()),
        SessionCookie::Unusable => {
            cookies::clear_session(changes);
            return Err(ApiError::login_required());
        }
        SessionCookie::Valid(id) => id,
    };
    let session = state.sessions.get(&id.key()).await.map_err(store_unavailable)?;
    session.ok_or_else(|| {
        cookies::clear_session(changes);
        ApiError::login_required()
    })
}

/// `session`, renewed first when Ave's access token is expiring (see `session::Renewer`): `/auth/token` and the
/// proxied routes. A session that renewal ends has its cookie expired along with the 401.
pub(super) async fn renewed(
    state: &AppState,
    session: Arc<Session>,
    changes: &CookieChanges,
) -> Result<Arc<Session>, ApiError> {
    let session = state.renewer.fresh(session).await.inspect_err(|e| {
        if matches!(e, RenewError::LoginRequired) {
            cookies::clear_session(changes);
        }
    })?;
    Ok(session)
}

/// Who an app JWT minted for `session` is about.
pub(super) fn subject(session: &Session) -> Subject<'_> {
    let data = &session.data;
    Subject {
        sub: &data.sub,
        sid: data.sid.as_str(),
        id_token: &data.id_token_claims,
        user: data.user.as_ref(),
    }
}

impl From<RenewError> for ApiError {
    fn from(e: RenewError) -> Self {
        match e {
            RenewError::LoginRequired => ApiError::login_required(),
            RenewError::Unavailable { reason, retry_after } => {
                ApiError::unavailable(reason, retry_after.as_secs().max(1))
            }
            RenewError::Rejected(reason) => ApiError::bad_gateway(reason),
        }
    }
}

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Start signing in with Ave.
    ///
    /// Redirects to Ave with `state`, `nonce` and a PKCE S256 challenge, which are
    /// kept in a short-lived encrypted `__Host-avemint-login` cookie. `return_to`
    /// must be a same-origin relative path; anything else becomes `/`.
    #[oai(path = "/login", method = "get")]
    async fn login(
        &self,
        state: Data<&Arc<AppState>>,
        changes: &CookieChanges,
        /// Where to go after signing in: a path on this origin, e.g. `/app`.
        return_to: Query<Option<String>>,
    ) -> Result<LoginResponse, ApiError> {
        let return_to = ReturnPath::parse(return_to.0.as_deref());
        let started = state
            .sign_in()
            .start(return_to, state.clock.now())
            .await
            .map_err(|e| ave_unavailable(&e))?;
        cookies::set_login(changes, &encode_login(&state.sessions.crypto().login, &started.pending));
        Ok(LoginResponse::Redirect(started.authorize_url))
    }

    /// Finish signing in (Ave redirects the browser here).
    ///
    /// Checks `state` against this browser's login cookie (single use), exchanges
    /// the code with the client secret and PKCE verifier, validates the id_token,
    /// stores the session and sets the `__Host-avemint` cookie. Any failure
    /// leaves no session and no session cookie.
    #[oai(path = "/callback", method = "get")]
    // Each argument is one part of the request that poem-openapi extracts.
    #[allow(clippy::too_many_arguments)]
    async fn callback(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        client: Data<&ClientIp>,
        /// The authorization code.
        code: Query<Option<String>>,
        /// The state sent to Ave.
        #[oai(name = "state")]
        state_param: Query<Option<String>>,
        /// Set by Ave instead of `code` when the user declined (`access_denied`).
        error: Query<Option<String>>,
    ) -> Result<CallbackResponse, ApiError> {
        let t = state.clock.now();
        // The login cookie is single use whatever happens next.
        let pending = pending_login(req, &state.sessions.crypto().login, t);
        cookies::clear_login(changes);
        let pending = pending.map_err(|e| ApiError::invalid_request(e.to_string()))?;
        let callback = Callback {
            code: code.0.as_deref(),
            state: state_param.0.as_deref(),
            error: error.0.as_deref(),
        };
        // Only crumbs with the exact raw name count: a look-alike is neither promoted nor acted on.
        let previous = cookies::all_session_ids(req.headers());
        // Only coarse labels are kept (sealed with the session): never the header nor the address.
        let signed_in_from = SignedInFrom {
            device: req
                .headers()
                .get(poem::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(device::device_label),
            network: device::network_hint(client.0.0),
        };
        let completed = state
            .sign_in()
            .complete(pending, &callback, client.0.0, signed_in_from, &previous, t)
            .await?;
        match completed {
            Completed::SignedIn {
                session,
                sid,
                return_to,
            } => {
                cookies::set_session(changes, &session, state.session_cookie_max_age);
                tracing::info!(sid = sid.as_str(), "signed in");
                Ok(CallbackResponse::Redirect(return_to.as_str().to_owned()))
            }
            Completed::NetworkRefused { retry_after } => Ok(CallbackResponse::network_refused(retry_after.as_secs())),
        }
    }

    /// Mint a short-lived app JWT for the signed-in user.
    ///
    /// Requires `X-CSRF: 1`. Without a valid session: 401 `login_required`
    /// (never a redirect), whatever the body names, so profiles and audiences
    /// cannot be probed without a session. The optional JSON body picks the token
    /// profile by `audience` or `profile`; no body (or `{}`) mints the default
    /// profile. Only profiles page script may mint are served: by default every profile except those a proxied
    /// route attaches (a profile says `browser = true` to be mintable anyway). With a session, an unknown
    /// audience or profile and one page script may not mint are the same 403 `invalid_target` (never a token for
    /// something else); both given but naming different profiles is 400 `invalid_request`. With
    /// `AVEMINT_TOKEN_ENDPOINT=off` (proxy-only deployments) this endpoint does not exist: 404 `not_found`. A
    /// failing claims hook whose policy is `deny` is 503 `temporarily_unavailable`; a token over the configured
    /// size limit is 500 `server_error`.
    #[oai(path = "/token", method = "post")]
    async fn token(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`: proves the request came from script on an allowed page.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
        body: OptionalJson<TokenRequest>,
    ) -> Result<PreparedJson<TokenBody>, ApiError> {
        require_csrf(&csrf)?;
        // The session first: without one, a configured and an unknown target are both 401.
        let session = current_session(&state, req, changes).await?;
        let target = body.0.as_ref();
        let profile = state
            .minter
            .profiles()
            .select_for_browser(
                target.and_then(|t| t.profile.as_deref()),
                target.and_then(|t| t.audience.as_deref()),
            )
            .map_err(ApiError::from)?;
        let session = renewed(&state, session, changes).await?;
        let minted = state
            .minter
            .mint(profile, &subject(&session))
            .await
            .map_err(ApiError::from)?;
        // Serializing two strings and an integer cannot fail.
        token_answer(&minted).map_err(|_| ApiError::internal("could not encode the token"))
    }

    /// The signed-in user's profile and session expiry (no tokens).
    ///
    /// Requires `X-CSRF: 1`.
    #[oai(path = "/session", method = "get")]
    async fn session(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
    ) -> Result<Json<SessionBody>, ApiError> {
        require_csrf(&csrf)?;
        let session = current_session(&state, req, changes).await?;
        let claims = &session.data.id_token_claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Json(SessionBody {
            sub: session.data.sub.clone(),
            name: text("name"),
            preferred_username: text("preferred_username"),
            email: text("email"),
            picture: text("picture"),
            expires_at: session.expires_at().as_secs(),
            expires_in: session.expires_in(state.sessions.now()).as_secs(),
        }))
    }

    /// The signed-in user's sessions (this one marked `current`).
    ///
    /// Requires `X-CSRF: 1`. Each has its `id` (the `sid` of its app JWTs), times, and where it was signed in:
    /// a device label (browser and OS) and a network (/24 or /48), never the full User-Agent or address.
    #[oai(path = "/sessions", method = "get")]
    async fn sessions(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
    ) -> Result<Json<SessionsBody>, ApiError> {
        require_csrf(&csrf)?;
        let session = current_session(&state, req, changes).await?;
        let listed = state
            .sessions
            .list_of(&session.data.sub)
            .await
            .map_err(store_unavailable)?;
        Ok(Json(SessionsBody {
            sessions: listed.into_iter().map(|s| SessionItem::of(s, &session.key)).collect(),
        }))
    }

    /// End one of the signed-in user's sessions.
    ///
    /// Requires `X-CSRF: 1`. `id` is a session's `id` from `GET /auth/sessions`. Another user's session and an
    /// unknown id are both 404. Ending this very session signs out (the cookie is expired).
    #[oai(path = "/sessions/:id", method = "delete")]
    async fn end_session(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
        /// The session's id (its `sid`).
        id: Path<String>,
    ) -> Result<EndSessionResponse, ApiError> {
        require_csrf(&csrf)?;
        let session = current_session(&state, req, changes).await?;
        let not_found = || {
            EndSessionResponse::NotFound(Json(ErrorBody {
                error: "not_found".into(),
                error_description: "you have no session with this id".into(),
            }))
        };
        let Some(sid) = SessionHandle::parse(&id.0) else {
            return Ok(not_found());
        };
        let ended = state
            .sessions
            .end_one_of(&session.data.sub, &sid)
            .await
            .map_err(store_unavailable)?;
        match ended {
            Some(key) => {
                if key == session.key {
                    cookies::clear_session(changes);
                }
                Ok(EndSessionResponse::Done)
            }
            None => Ok(not_found()),
        }
    }

    /// Sign out: deletes the session and expires the cookie.
    ///
    /// Requires `X-CSRF: 1`. No body signs out of this session only (always 204, with or without a session).
    /// `{"scope": "others"}` ends every other session of this user and keeps this one; `{"scope": "all"}` ends
    /// every session of this user; both need a valid session (401 `login_required` otherwise). An unknown scope
    /// is 400 `invalid_request`. Ave has no revocation or end-session endpoint, so Ave's own tokens simply stop
    /// being used; they expire on Ave's schedule.
    #[oai(path = "/logout", method = "post")]
    async fn logout(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
        body: OptionalJson<LogoutRequest>,
    ) -> Result<LogoutResponse, ApiError> {
        require_csrf(&csrf)?;
        if let Some(scope) = body.0.and_then(|b| b.scope) {
            let session = current_session(&state, req, changes).await?;
            let keep = (scope == LogoutScope::Others).then_some(&session.key);
            let ended = state
                .sessions
                .end_all_of(&session.data.sub, keep)
                .await
                .map_err(store_unavailable)?;
            tracing::info!(sid = session.data.sid.as_str(), ended, scope = ?scope, "signed out of several sessions");
            if scope == LogoutScope::Others {
                return Ok(LogoutResponse::Done);
            }
        }
        // Every session named under the exact cookie name ends; look-alikes are not acted on.
        for id in cookies::all_session_ids(req.headers()) {
            state.sessions.delete(&id.key()).await.map_err(store_unavailable)?;
        }
        cookies::clear_session(changes);
        Ok(LogoutResponse::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use poem::IntoResponse as _;
    use poem_openapi::types::ToJSON as _;

    async fn answer_for(token: &str) -> Value {
        let minted = MintedToken {
            token: Secret::new(token.to_owned()),
            expires_in: 300,
        };
        let response = token_answer(&minted).expect("answer").into_response();
        assert_eq!(response.content_type(), Some("application/json; charset=utf-8"));
        let body = response.into_body().into_bytes().await.expect("body");
        serde_json::from_slice(&body).expect("JSON")
    }

    fn documented(token: &str) -> Option<Value> {
        TokenBody {
            access_token: token.into(),
            token_type: "Bearer".into(),
            expires_in: 300,
        }
        .to_json()
    }

    #[tokio::test]
    async fn the_token_answer_is_the_documented_token_body() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_";
        assert_eq!(Some(answer_for(jwt).await), documented(jwt));
        // Not a compact JWS: still valid JSON with the same value.
        let odd = "a\"b\\c\u{1}é";
        assert_eq!(Some(answer_for(odd).await), documented(odd));
    }
}
