//! `/auth/*`: the browser-facing sign-in, session and token endpoints.
//!
//! Only the handlers and their bodies: the session guard they share with the proxied routes is
//! `session_guard`, the answers to failures are `errors`.

use std::sync::Arc;

use poem::Request;
use poem::web::Data;
use poem_openapi::param::{Header, Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};
use serde_json::Value;

use super::cookies::{self, CookieChanges, Sent};
use super::errors::{Answers, ApiError, ErrorBody, ave_unavailable, store_unavailable};
use super::optional_json::OptionalJson;
use super::prepared_json::PreparedJson;
use super::session_guard::{current_session, renewed, require_csrf, subject};
use super::session_view::SessionView;
use super::signin_page::RetryTarget;
use super::{ApiTags, AppState};
use avemint_base::clock::UnixTime;
use avemint_base::log_gate::LogGate;
use avemint_core::mint::MintedToken;
use avemint_core::session::{Sealer, SessionHandle, SessionRowHash, SessionSummary, SignedInFrom};
use avemint_core::signin::{
    Callback, Completed, PendingLogin, PendingLoginError, Prompt, ReturnPath, SignIn, SignInError, decode_login,
    encode_login,
};
use avemint_core::traffic::client_ip::ClientIp;
use avemint_core::traffic::device;

/// The auth endpoints.
pub(crate) struct AuthApi;

/// The answer of every endpoint that needs `X-CSRF: 1`, for a request without it or from another origin.
const CSRF_403: &str = "`X-CSRF: 1` is missing, or the request comes from an origin that is neither this service nor in \
`AVEMINT_ALLOWED_ORIGINS` (`invalid_request`).";
/// A header, parameter or body avemint cannot read.
const UNREADABLE_400: &str = "A header or parameter that cannot be read, or a body that could not be received \
(`invalid_request`).";
/// The store behind every session read.
const STORE_503: &str = "The session store is unreachable right now (`temporarily_unavailable`, with `Retry-After`).";
const LOGIN_401: &str = "No valid session (`login_required`).";

/// What each auth endpoint can answer besides success and the guard's refusals (see `errors::audit`), each with its
/// own description: the shared `ApiError` lists every status any of them gives.
pub(crate) const ANSWERS: &[Answers] = &[
    Answers {
        method: "GET",
        path: "/auth/login",
        errors: &[
            (400, UNREADABLE_400),
            (502, "Ave's discovery document cannot be used (`server_error`)."),
            (
                503,
                "Ave's discovery document cannot be loaded right now (`temporarily_unavailable`, with `Retry-After`).",
            ),
        ],
    },
    Answers {
        method: "GET",
        path: "/auth/callback",
        errors: &[
            (
                400,
                "The sign-in cannot be completed: no or an unusable login cookie, a missing or wrong `state`, no \
                 `code`, or an error from Ave (`invalid_request`); Ave refused the code (`invalid_grant`); the \
                 id_token failed validation (`invalid_token`).",
            ),
            (403, "The user declined at Ave (`access_denied`)."),
            (429, ""),
            (
                502,
                "Ave answered the code exchange in a way avemint cannot use, or without an id_token (`server_error`).",
            ),
            (
                503,
                "Ave or the session store is unreachable, or Ave's token budget has no room within the wait bound \
                 (`temporarily_unavailable`, with `Retry-After`).",
            ),
        ],
    },
    Answers {
        method: "POST",
        path: "/auth/token",
        errors: &[
            (
                400,
                "The body is not a token request, or names a profile and an audience of different profiles \
                 (`invalid_request`).",
            ),
            (401, "No valid session, whatever the body names (`login_required`)."),
            (
                403,
                "`X-CSRF: 1` is missing, or the request comes from an origin that is neither this service nor in \
                 `AVEMINT_ALLOWED_ORIGINS` (`invalid_request`); no token profile page script may mint has this name \
                 or audience (`invalid_target`: not configured, or a proxied route's without `browser = true`).",
            ),
            (
                500,
                "The app JWT would be longer than `max_token_bytes` (`server_error`).",
            ),
            (
                502,
                "Ave answered the session's renewal with an error (`server_error`).",
            ),
            (
                503,
                "The session store, Ave (renewing the session) or the profile's claims hook (policy `deny`) is \
                 unavailable, or signing failed (`temporarily_unavailable`, with `Retry-After`).",
            ),
        ],
    },
    Answers {
        method: "GET",
        path: "/auth/session",
        errors: &[
            (400, UNREADABLE_400),
            (401, LOGIN_401),
            (403, CSRF_403),
            (503, STORE_503),
        ],
    },
    Answers {
        method: "GET",
        path: "/auth/sessions",
        errors: &[
            (400, UNREADABLE_400),
            (401, LOGIN_401),
            (403, CSRF_403),
            (503, STORE_503),
        ],
    },
    Answers {
        method: "DELETE",
        path: "/auth/sessions/{id}",
        errors: &[
            (400, UNREADABLE_400),
            (401, LOGIN_401),
            (403, CSRF_403),
            (404, ""),
            (503, STORE_503),
        ],
    },
    Answers {
        method: "POST",
        path: "/auth/logout",
        errors: &[
            (
                400,
                "The body is not JSON, or names an unknown `scope` (`invalid_request`).",
            ),
            (401, "A `scope` was given without a valid session (`login_required`)."),
            (403, CSRF_403),
            (503, STORE_503),
        ],
    },
];

/// Redirect to Ave's sign-in page.
#[derive(ApiResponse)]
pub(crate) enum LoginResponse {
    /// Redirect to Ave's authorization endpoint. Sets the `__Host-avemint-login` cookie.
    #[oai(status = 302)]
    Redirect(#[oai(header = "Location")] String),
}

/// What Ave's sign-in page should do besides signing in (`prompt`; Ave's `none` and `login` do nothing there, so
/// they are not offered).
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub(crate) enum LoginPrompt {
    /// Ave shows its account choice instead of signing in again as the identity used last (switching accounts).
    SelectAccount,
    /// Ave shows the consent screen even for an app the user already approved.
    Consent,
}

impl From<LoginPrompt> for Prompt {
    fn from(prompt: LoginPrompt) -> Self {
        match prompt {
            LoginPrompt::SelectAccount => Prompt::SelectAccount,
            LoginPrompt::Consent => Prompt::Consent,
        }
    }
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
    /// Always `true` here (the signed-out answer to `optional=1` is `{"authenticated": false}`).
    pub authenticated: bool,
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

/// The answer to `GET /auth/session?optional=1` without a session.
#[derive(Object)]
pub(crate) struct SignedOutBody {
    /// Always `false`: nobody is signed in.
    pub authenticated: bool,
}

/// `GET /auth/session`'s answer: the signed-in user, or (only with `optional=1`) that nobody is signed in.
#[derive(Union)]
pub(crate) enum SessionAnswer {
    SignedIn(SessionBody),
    SignedOut(SignedOutBody),
}

/// `optional=1`: a caller without a session gets 200 `{"authenticated": false}` instead of 401.
#[derive(poem_openapi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionalSession {
    /// Answer without a session too.
    #[oai(rename = "1")]
    Yes,
}

/// The signed-in user's sessions.
#[derive(Object)]
pub(crate) struct SessionsBody {
    /// Most recently used first.
    pub sessions: Vec<SessionItem>,
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

/// Failed sign-ins: one line per cause every 10 s at its level (the rest at `debug`): anyone can make a callback fail.
static SIGN_IN_FAILURES: LogGate<&'static str> = LogGate::new(avemint_base::log_gate::OUTAGE_INTERVAL);

/// Logs a failed sign-in with its cause (never a code, token, state or secret: the errors carry none): at `error`
/// for a misconfiguration, else at `warn`; through [`SIGN_IN_FAILURES`].
fn sign_in_failed(label: &'static str, misconfigured: bool, cause: &dyn std::fmt::Display) {
    match SIGN_IN_FAILURES.pass_for(label) {
        Some(held_back) if misconfigured => {
            tracing::error!(failure = label, %cause, similar_lines_held_back = held_back, "sign-in failed: avemint is misconfigured")
        }
        Some(held_back) => {
            tracing::warn!(failure = label, %cause, similar_lines_held_back = held_back, "sign-in failed")
        }
        None => tracing::debug!(failure = label, %cause, "sign-in failed"),
    }
}

/// The log label of a sign-in failure.
fn failure_label(e: &SignInError) -> &'static str {
    match e {
        SignInError::MissingParameter(_) | SignInError::MalformedParameter(_) => "malformed_callback",
        SignInError::StateMismatch | SignInError::StateReplayed => "state",
        SignInError::AccessDenied => "access_denied",
        SignInError::ProviderError => "provider_error",
        SignInError::CodeRejected(_) => "code_rejected",
        SignInError::ClientRejected(_) => "client_rejected",
        SignInError::NoIdToken | SignInError::IdToken(_) => "id_token",
        SignInError::Ave(_) => "ave",
        SignInError::Store(_) => "store",
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

#[OpenApi(prefix_path = "/auth", tag = "ApiTags::Auth")]
impl AuthApi {
    /// Start signing in with Ave.
    ///
    /// Redirects to Ave with `state`, `nonce` and a PKCE S256 challenge, which are
    /// kept in a short-lived encrypted `__Host-avemint-login` cookie. `return_to`
    /// must be a same-origin relative path; anything else becomes `/`. `prompt`
    /// is passed on to Ave: `select_account` lets the user pick another account
    /// (switching accounts), `consent` shows the consent screen again; any other
    /// value is 400 `invalid_request`.
    #[oai(path = "/login", method = "get")]
    async fn login(
        &self,
        state: Data<&Arc<AppState>>,
        changes: &CookieChanges,
        /// Where to go after signing in: a path on this origin, e.g. `/app`.
        return_to: Query<Option<String>>,
        /// `select_account` or `consent`, passed on to Ave's sign-in page.
        prompt: Query<Option<LoginPrompt>>,
    ) -> Result<LoginResponse, ApiError> {
        let return_to = ReturnPath::parse(return_to.0.as_deref());
        let started = state
            .sign_in()
            .start(return_to, prompt.0.map(Prompt::from), state.clock.now())
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
    /// leaves no session and no session cookie, and is logged with its cause. A
    /// browser navigation (`Sec-Fetch-Mode: navigate`, or `Accept: text/html`
    /// without `Sec-Fetch-Mode`) that fails gets the same status with an HTML page
    /// (what happened, a link to sign in again) instead of the JSON body, or, with
    /// `AVEMINT_ERROR_PATH`, a 302 to `{error_path}?error=<code>`; so does a failing
    /// navigation to `/auth/login`. Other callers get the JSON documented here.
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
        let pending = pending.map_err(|e| {
            sign_in_failed("login_cookie", false, &e);
            ApiError::invalid_request(e.to_string())
        })?;
        if let Some(retry) = req.extensions().get::<RetryTarget>() {
            retry.set(&pending.return_to);
        }
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
            .await
            .inspect_err(|e| sign_in_failed(failure_label(e), matches!(e, SignInError::ClientRejected(_)), e))?;
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
        let profiles = state.minter.profiles();
        let profile = profiles
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
    /// Requires `X-CSRF: 1`. Without a session: 401 `login_required`, or with `optional=1` 200
    /// `{"authenticated": false}`, so a public page can ask "am I signed in?" without an error (a cookie that names
    /// no live session is expired either way).
    #[oai(path = "/session", method = "get")]
    async fn session(
        &self,
        state: Data<&Arc<AppState>>,
        req: &Request,
        changes: &CookieChanges,
        /// Must be `1`.
        #[oai(name = "X-CSRF")]
        csrf: Header<Option<String>>,
        /// `1`: answer 200 `{"authenticated": false}` instead of 401 when nobody is signed in.
        optional: Query<Option<OptionalSession>>,
    ) -> Result<Json<SessionAnswer>, ApiError> {
        require_csrf(&csrf)?;
        let session = match current_session(&state, req, changes).await {
            Ok(session) => session,
            // `current_session`'s only 401 is `login_required`: no live session.
            Err(ApiError::Unauthorized(_)) if optional.0.is_some() => {
                return Ok(Json(SessionAnswer::SignedOut(SignedOutBody { authenticated: false })));
            }
            Err(e) => return Err(e),
        };
        let claims = &session.data.id_token_claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Json(SessionAnswer::SignedIn(SessionBody {
            authenticated: true,
            sub: session.data.sub.clone(),
            name: text("name"),
            preferred_username: text("preferred_username"),
            email: text("email"),
            picture: text("picture"),
            expires_at: session.expires_at().as_secs(),
            expires_in: session.expires_in(state.sessions.now()).as_secs(),
        })))
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
    use avemint_base::secret::Secret;
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
