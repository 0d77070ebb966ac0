//! A local Ave emulator: a real HTTP server on loopback that imitates Ave, the
//! OpenID Connect provider at aveid.net.
//!
//! # Why it exists
//!
//! avemint is a confidential OAuth client of Ave. Nothing may be sent to the
//! live service from tests, and `avemint demo` must work offline for a human in
//! a browser. One emulator serves both: the demo starts it with defaults and
//! lets the user click "Sign in as …", and the tests start it, drive it over
//! HTTP and then switch it into hostile behaviours (forged or defective
//! id_tokens, key rotation, failing token endpoint, rate limits) to check that
//! the client reacts correctly.
//!
//! # Fidelity
//!
//! The behaviour follows `docs/ave-protocol.md` (the wire-protocol fact
//! sheet derived from Ave's source) and its "emulator fidelity checklist":
//!
//! * discovery document with Ave's keys in Ave's order; a JWKS holding one
//!   RS256 key with a configurable `kid`;
//! * a JSON-only token endpoint with snake/camel key normalisation (camelCase
//!   wins), zod-shaped 400 bodies for non-JSON or schema errors and
//!   `500 {"error":"Internal Server Error"}` for malformed JSON;
//! * the authorization-code grant with the code deleted first and the checks
//!   in Ave's order, PKCE `S256`/`plain` (a stored challenge makes the verifier
//!   mandatory; an unset method means plain);
//! * the refresh grant with rotation on every use, family revocation on
//!   reuse, "Refresh token was already used" for a lost race, and the client
//!   secret optional when no `Origin` header is sent;
//! * RS256 JWTs with Ave's header, claims and claim order (null `picture` /
//!   `email` kept, no `sid`/`at_hash`/`email_verified`, `auth_time` = `iat`,
//!   `nonce` only from the code grant);
//! * userinfo accepting the opaque access token or `access_token_jwt` but not
//!   the id_token; a per-client token-endpoint rate limit;
//!   `Cache-Control: no-store` on `/api/*`; 404 `{"error":"Not Found"}`.
//!
//! Differences from Ave that matter to nobody but are listed for honesty: one
//! client (the configured one; [`Emulator::access_token_jwt_for`] mints the
//! access tokens Ave would issue to other apps, for avemint's token exchange); every endpoint lives on one loopback server
//! whatever the issuer says; no Quick (`origin:`) clients, organisations,
//! E2EE key delivery, token exchange (the grant passes schema validation and
//! then gets `400 invalid_request`), per-IP or userinfo rate limits, or
//! webfinger; state lives in memory.
//!
//! # Routes
//!
//! | Route | What |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery |
//! | `GET /.well-known/jwks.json` | JWKS (counted, see [`Emulator::jwks_fetches`]) |
//! | `GET /signin` | the authorization page (Ave's `/signin`) |
//! | `POST /signin/decide` | the page's forms post here |
//! | `POST /api/oauth/token` | token endpoint |
//! | `GET /api/oauth/userinfo` | userinfo |
//!
//! # The sign-in page and its forms
//!
//! `GET /signin` reads `client_id`, `redirect_uri`, `scope` (default
//! `openid profile email`), `state`, `nonce`, `code_challenge` and
//! `code_challenge_method` (kept only when exactly `S256` or `plain`) and
//! ignores `response_type`, `prompt=none/login` and `max_age`. An unknown
//! client or an unregistered redirect URI shows an error page (HTTP 400) and
//! never redirects. With [`Emulator::set_auto_approve`] set, it answers with the
//! 302 straight away (unless `prompt` contains `consent` or `select_account`).
//!
//! Otherwise it renders one `<form method="post" action="/signin/decide">` per
//! user plus one for "Deny". Every form carries these fields (all
//! `type="hidden"` except the submit button), which black-box tests may post
//! directly as `application/x-www-form-urlencoded`:
//!
//! | Field | Value |
//! |---|---|
//! | `client_id` | as requested |
//! | `redirect_uri` | as requested (raw) |
//! | `scope` | the effective scope string |
//! | `state` | as requested, may be empty |
//! | `nonce` | as requested, may be empty |
//! | `code_challenge` | as requested, may be empty |
//! | `code_challenge_method` | `S256`, `plain` or empty |
//! | `user_id` | the user's id (empty in the Deny form) |
//! | `decision` | `approve` (the "Sign in as …" buttons) or `deny` |
//!
//! Approval redirects (302) to `redirect_uri` with `code` and, if non-empty,
//! `state` set with URLSearchParams-`set` semantics; denial redirects with
//! `error=access_denied` (plus `state`).
//!
//! # Hostile switches
//!
//! [`Emulator::set_id_token_defect`], [`Emulator::rotate_signing_key`],
//! [`Emulator::set_token_failure`], [`Emulator::set_metadata_failure`] and a small
//! [`EmulatorConfig::token_rate_limit_per_minute`] turn the emulator against
//! its client; [`Emulator::set_advertised_base_url`] puts a proxy (such as the
//! tests' fault injector) in front of its token, userinfo and JWKS endpoints.
//! [`Emulator::token_requests`], [`Emulator::jwks_fetches`],
//! [`Emulator::refresh_families_revoked`] and
//! [`Emulator::concurrent_refresh_presentations`] let tests observe what the
//! client did. Tokens and secrets are never logged.
//!
//! # Layout
//!
//! | Module | What it owns |
//! |---|---|
//! | `lib.rs` | the public API: [`Emulator`], its configuration and switches |
//! | `http` | the router, discovery and JWKS |
//! | `respond` | the response helpers every handler shares: JSON, `{"error"}` answers, CORS |
//! | `signin` | the sign-in page and its forms |
//! | `token` | `POST /api/oauth/token`: body, rate limit, presentation counting, recording |
//! | `request` | token-request parsing with zod-shaped errors |
//! | `grants` | the authorization-code and refresh grants (rotation, reuse detection) |
//! | `reply` | token-endpoint answers and OAuth errors |
//! | `jwt` | minting (and forging, for the hostile switches) Ave's JWTs; verifying access JWTs |
//! | `scopes` | Ave's scope rules |
//! | `userinfo` | `GET /api/oauth/userinfo` |
//! | `state` | the in-memory records (codes, tokens, refresh families, rate windows) |
//! | `crypto` | RSA keys, JWS, digests and random values (aws-lc-rs) |
//!
//! avemint's `serve` binary never contains this crate: it is a dev-dependency of
//! avemint, and a normal one only behind avemint's `demo` cargo feature.

mod crypto;
mod grants;
mod http;
mod jwt;
mod reply;
mod request;
mod respond;
mod scopes;
mod signin;
mod state;
mod token;
mod userinfo;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use poem::listener::TcpAcceptor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::crypto::IssuerKey;
use self::state::State;

/// How the emulator is set up. Every field has a sensible default, so
/// `EmulatorConfig::default()` gives a ready-to-use demo provider.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Where to listen. Default `127.0.0.1:0` (a random free port).
    pub listen: SocketAddr,
    /// The issuer (`iss`, discovery `issuer`, the resource audience of
    /// `access_token_jwt`). `None` means the server's own base URL, e.g.
    /// `http://127.0.0.1:PORT` with no trailing slash. Only the value matters:
    /// all routes are served on the emulator's own address regardless.
    pub issuer: Option<String>,
    /// The one registered client. Default `app_` + 32 random hex characters.
    pub client_id: String,
    /// Its secret. Default 48 random hex characters.
    pub client_secret: String,
    /// Registered redirect URIs, stored verbatim. The request's value is
    /// WHATWG-normalised (via `url::Url`) and must equal one of these
    /// exactly, as in Ave. Default empty; see [`Emulator::set_redirect_uris`].
    pub redirect_uris: Vec<String>,
    /// The identities one can sign in as. Default: Ada Lovelace (email, no
    /// avatar) and Grace Hopper (email and a `data:` avatar).
    pub users: Vec<EmulatedUser>,
    /// Access-token lifetime, which also drives `expires_in`,
    /// `access_token_jwt.exp` and `id_token.exp`. Whole seconds are used; zero
    /// falls back to 3600 like Ave. Default 3600 s.
    pub access_token_ttl: Duration,
    /// Refresh-token lifetime, sliding on each rotation. Sub-second precision
    /// is honoured (handy for expiry tests). Default 30 days.
    pub refresh_token_ttl: Duration,
    /// `kid` of the signing key. Default `ave-oidc-v1`.
    pub kid: String,
    /// Token-endpoint requests allowed per client_id per 60-second window.
    /// Default 180 (Ave's value).
    pub token_rate_limit_per_minute: u32,
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("listen", &self.listen)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_uris", &self.redirect_uris)
            .field("users", &self.users)
            .field("access_token_ttl", &self.access_token_ttl)
            .field("refresh_token_ttl", &self.refresh_token_ttl)
            .field("kid", &self.kid)
            .field("token_rate_limit_per_minute", &self.token_rate_limit_per_minute)
            .finish()
    }
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            issuer: None,
            client_id: format!("app_{}", crypto::random_hex_for_default(16)),
            client_secret: crypto::random_hex_for_default(24),
            redirect_uris: Vec::new(),
            users: EmulatedUser::defaults(),
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            kid: "ave-oidc-v1".to_owned(),
            token_rate_limit_per_minute: 180,
        }
    }
}

/// An Ave identity one can sign in as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulatedUser {
    /// Identity UUID (v4 string): `sub`, `user.id`.
    pub id: String,
    /// `name` claim, `user.displayName`.
    pub display_name: String,
    /// `preferred_username` claim, `user.handle`.
    pub handle: String,
    /// Verified email or none. A user without email cannot approve a request
    /// that asks for the `email` scope (Ave's 409 "Add a verified email
    /// before continuing").
    pub email: Option<String>,
    /// `picture` claim / `user.avatarUrl`; `None` is sent as JSON `null`.
    pub avatar_url: Option<String>,
}

impl EmulatedUser {
    /// The two default users: Ada Lovelace and Grace Hopper, with fixed ids
    /// so that `sub` stays stable across emulator runs.
    pub fn defaults() -> Vec<EmulatedUser> {
        vec![
            EmulatedUser {
                id: "0b5c3a3e-7d4f-4c1a-9e2b-6f8d1a2b3c4d".to_owned(),
                display_name: "Ada Lovelace".to_owned(),
                handle: "ada".to_owned(),
                email: Some("ada@example.com".to_owned()),
                avatar_url: None,
            },
            EmulatedUser {
                id: "6e2f9b1c-3a5d-4e7f-8b9c-0d1e2f3a4b5c".to_owned(),
                display_name: "Grace Hopper".to_owned(),
                handle: "grace".to_owned(),
                email: Some("grace@example.com".to_owned()),
                avatar_url: Some(GRACE_AVATAR.to_owned()),
            },
        ]
    }
}

/// A tiny self-contained SVG avatar, so the demo never loads anything remote.
const GRACE_AVATAR: &str = "data:image/svg+xml,%3Csvg%20xmlns%3D%22http%3A%2F%2Fwww.w3.org%2F2000%2Fsvg%22%20viewBox%3D%220%200%2064%2064%22%3E%3Crect%20width%3D%2264%22%20height%3D%2264%22%20fill%3D%22%23345%22%2F%3E%3Ctext%20x%3D%2232%22%20y%3D%2241%22%20font-size%3D%2226%22%20text-anchor%3D%22middle%22%20fill%3D%22%23fff%22%3EGH%3C%2Ftext%3E%3C%2Fsvg%3E";

/// A defect deliberately put into every id_token minted from now on (code and
/// refresh grants), to test that the client rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdTokenDefect {
    /// Correct header and claims, RS256 signature with one byte flipped.
    BadSignature,
    /// Header `{"alg":"none","typ":"JWT","kid":<kid>}` and an empty signature.
    AlgNone,
    /// Header `{"alg":"HS256","typ":"JWT","kid":<kid>}`, HMAC-SHA256 keyed
    /// with the bytes of [`Emulator::public_key_pem`] (the algorithm-confusion
    /// attack).
    Hs256WithPublicKey,
    /// `iss` is `https://evil.example`.
    WrongIssuer,
    /// `iss` is the real issuer with `evil` appended, e.g.
    /// `http://127.0.0.1:1234evil`.
    IssuerPrefix,
    /// `aud` and `azp` are `other-client`.
    WrongAudience,
    /// `aud` is `[client_id, "other-client"]` and `azp` is omitted.
    AudienceArrayWithoutAzp,
    /// `exp` 10 minutes in the past (`iat` = `exp` − TTL).
    Expired,
    /// `iat` (and `auth_time`) 10 minutes in the future.
    IssuedInFuture,
    /// `nonce` is a random value unrelated to the request (also added to
    /// refresh-grant id_tokens).
    WrongNonce,
    /// No `nonce` claim even though the request had one.
    MissingNonce,
    /// No `sub` claim.
    MissingSub,
    /// Correctly signed, but by a key whose `kid` never appears in the JWKS.
    UnpublishedKid,
}

/// A hostile token endpoint. Applied to every `POST /api/oauth/token` before
/// any grant processing (a failing request consumes no code or refresh token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// Answer with this status and an Ave-like body: 400 `invalid_request`,
    /// 401 `unauthorized`, 403 `access_denied`, 404 `Not Found`, 429 "Too many
    /// attempts…", 503 "Rate limiting temporarily unavailable…", anything
    /// else `{"error":"Internal Server Error"}`. Invalid codes become 500.
    Status(u16),
    /// 429 with `Retry-After: retry_after_secs` and the rate-limit headers.
    RateLimited {
        /// Value of `Retry-After`, in seconds.
        retry_after_secs: u64,
    },
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Process the request normally (rotating a refresh token, say), then
    /// sleep this long before answering: a client that gives up or dies in
    /// between has lost the response although Ave acted on it.
    DelayAfterProcessing(Duration),
    /// 200 with `Content-Type: application/json` and an HTML body.
    MalformedBody,
}

/// What the emulator saw of one token-endpoint call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedTokenRequest {
    /// The grant type after snake/camel normalisation, if it was a string.
    pub grant_type: Option<String>,
    /// The raw `Content-Type` header.
    pub content_type: Option<String>,
    /// Names of the top-level JSON keys sent (sorted; empty for non-JSON).
    pub keys: Vec<String>,
    /// Whether any camelCase key (`grantType`, `clientId`, …) was sent.
    pub camel_case: bool,
    /// Whether an `Authorization` header was sent (Ave ignores it; a client
    /// using HTTP Basic is doing it wrong).
    pub authorization_header: bool,
    /// The W3C `traceparent` header, if one was sent (trace propagation tests).
    pub traceparent: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    /// The `error` string of the answer (`"ZodError"` for schema errors),
    /// `None` on success.
    pub error: Option<String>,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The RSA signing key could not be generated.
    #[error("could not generate the emulator's RSA signing key")]
    KeyGeneration,
    /// The configuration is unusable.
    #[error("invalid emulator configuration: {0}")]
    Config(String),
}

/// Immutable configuration plus mutable state, shared with the server task.
pub(crate) struct Shared {
    config: EmulatorConfig,
    base_url: String,
    issuer: String,
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state. A poisoned lock is recovered: the state stays usable
    /// because every mutation is a single map operation.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client's current secret.
    pub(crate) fn client_secret(&self) -> String {
        self.lock().client_secret.clone()
    }

    /// Access TTL in whole seconds (0 falls back to 3600, as in Ave).
    fn access_ttl_secs(&self) -> u64 {
        match self.config.access_token_ttl.as_secs() {
            0 => 3600,
            secs => secs,
        }
    }

    fn user(&self, id: &str) -> Option<&EmulatedUser> {
        self.config.users.iter().find(|u| u.id == id)
    }
}

/// Owns the server task; dropping the last handle aborts it.
struct ServerTask {
    shutdown: Mutex<Option<oneshot::Sender<()>>>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        let handle = self.handle.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            handle.abort();
        }
    }
}

/// A running emulator. Cheap to clone; the server stops when
/// [`Emulator::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
    server: Arc<ServerTask>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.shared.base_url)
            .field("issuer", &self.shared.issuer)
            .field("client_id", &self.shared.config.client_id)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds the listener, generates the signing key and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        if config.client_id.is_empty() {
            return Err(EmulatorError::Config("client_id is empty".to_owned()));
        }
        if config.kid.is_empty() {
            return Err(EmulatorError::Config("kid is empty".to_owned()));
        }
        if let Some(issuer) = &config.issuer
            && url::Url::parse(issuer).is_err()
        {
            return Err(EmulatorError::Config(format!("issuer {issuer:?} is not a URL")));
        }
        let kid = config.kid.clone();
        let key = tokio::task::spawn_blocking(move || IssuerKey::generate(kid))
            .await
            .map_err(|_| EmulatorError::KeyGeneration)?
            .map_err(|_| EmulatorError::KeyGeneration)?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| EmulatorError::Bind {
            addr: config.listen,
            source,
        })?;
        let base_url = base_url_for(local);
        let acceptor = TcpAcceptor::from_tokio(listener).map_err(|source| EmulatorError::Bind {
            addr: config.listen,
            source,
        })?;
        let issuer = config.issuer.clone().unwrap_or_else(|| base_url.clone());
        let state = State::new(config.client_secret.clone(), config.redirect_uris.clone(), key);
        let shared = Arc::new(Shared {
            config,
            base_url,
            issuer,
            state: Mutex::new(state),
        });

        let (tx, rx) = oneshot::channel::<()>();
        let endpoint = http::endpoint(Arc::clone(&shared));
        let handle = tokio::spawn(async move {
            let server = poem::Server::new_with_acceptor(acceptor);
            let signal = async move {
                let _ = rx.await;
            };
            if let Err(error) = server
                .run_with_graceful_shutdown(endpoint, signal, Some(Duration::from_secs(2)))
                .await
            {
                tracing::warn!(%error, "Ave emulator server stopped with an error");
            }
        });
        tracing::info!(base_url = %shared.base_url, "Ave emulator listening");
        Ok(Emulator {
            shared,
            server: Arc::new(ServerTask {
                shutdown: Mutex::new(Some(tx)),
                handle: Mutex::new(Some(handle)),
            }),
        })
    }

    /// The server's base URL, e.g. `http://127.0.0.1:PORT` (no trailing
    /// slash).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The issuer: the configured one or [`Emulator::base_url`].
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The resource audience (`aud` of `access_token_jwt`): equal to the
    /// issuer, as in Ave's production configuration.
    pub fn resource_audience(&self) -> String {
        self.shared.issuer.clone()
    }

    /// `{base}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.shared.base_url)
    }

    /// `{base}/signin`: the authorization endpoint on this server (the
    /// discovery document says `{issuer}/signin`, which is the same unless a
    /// custom issuer is configured).
    pub fn signin_url(&self) -> String {
        format!("{}/signin", self.shared.base_url)
    }

    /// `{base}/api/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("{}/api/oauth/token", self.shared.base_url)
    }

    /// `{base}/api/oauth/userinfo`.
    pub fn userinfo_url(&self) -> String {
        format!("{}/api/oauth/userinfo", self.shared.base_url)
    }

    /// `{base}/.well-known/jwks.json`.
    pub fn jwks_url(&self) -> String {
        format!("{}/.well-known/jwks.json", self.shared.base_url)
    }

    /// The registered client's id.
    pub fn client_id(&self) -> &str {
        &self.shared.config.client_id
    }

    /// The registered client's current secret.
    pub fn client_secret(&self) -> String {
        self.shared.client_secret()
    }

    /// Rotates the client secret as Ave's `POST /api/apps/:appId/rotate-secret` does: the old secret stops working
    /// at once, with no overlap (docs/ave-protocol.md §1.6); no token is revoked.
    pub fn rotate_client_secret(&self, secret: String) {
        self.shared.lock().client_secret = secret;
    }

    /// The identities one can sign in as.
    pub fn users(&self) -> &[EmulatedUser] {
        &self.shared.config.users
    }

    /// Replaces the registered redirect URIs (compared verbatim against the
    /// normalised request value). Needed because a client's port is usually
    /// only known after the emulator has started.
    pub fn set_redirect_uris(&self, uris: Vec<String>) {
        self.shared.lock().redirect_uris = uris;
    }

    /// `Some(user_id)`: `GET /signin` approves at once as that user (Ave's
    /// auto-approve for a returning user). `None`: show the HTML page.
    pub fn set_auto_approve(&self, user_id: Option<String>) {
        self.shared.lock().auto_approve = user_id;
    }

    /// Puts `defect` into every id_token minted from now on (code and refresh
    /// grants); `None` restores correct tokens. For
    /// [`IdTokenDefect::UnpublishedKid`] this generates the rogue RSA key on
    /// first use (a short blocking computation).
    pub fn set_id_token_defect(&self, defect: Option<IdTokenDefect>) {
        if defect == Some(IdTokenDefect::UnpublishedKid) && self.shared.lock().rogue_key.is_none() {
            let kid = format!("unpublished-{}", crypto::random_hex_for_default(8));
            match IssuerKey::generate(kid) {
                Ok(key) => {
                    let mut state = self.shared.lock();
                    if state.rogue_key.is_none() {
                        state.rogue_key = Some(Arc::new(key));
                    }
                }
                Err(_) => tracing::warn!("could not generate the emulator's unpublished key"),
            }
        }
        self.shared.lock().id_token_defect = defect;
    }

    /// Replaces the signing key with a new RSA key under a new `kid`
    /// (`<configured kid>-<8 hex>`). From now on the JWKS serves only the new
    /// key, new tokens are signed with it, and userinfo rejects JWTs signed
    /// with the old one. Generation blocks briefly.
    pub fn rotate_signing_key(&self) {
        let kid = format!("{}-{}", self.shared.config.kid, crypto::random_hex_for_default(4));
        match IssuerKey::generate(kid) {
            Ok(key) => self.shared.lock().signing_key = Arc::new(key),
            Err(_) => tracing::warn!("could not generate a new emulator signing key"),
        }
    }

    /// An `access_token_jwt` as Ave's token endpoint issues it to another registered app of this Ave (a native
    /// app signing in with PKCE, which this one-client emulator does not host): `sub` the user `user_id`, `cid`
    /// `client_id`, `scope`, issued now and expiring `lifetime_secs` from now (negative: already expired), signed
    /// with the current key. Tests of avemint's token exchange use it for clients other than the configured one.
    pub fn access_token_jwt_for(&self, user_id: &str, client_id: &str, scope: &str, lifetime_secs: i64) -> String {
        let now = jwt::unix_secs();
        let iat = if lifetime_secs < 0 {
            now + lifetime_secs - 60
        } else {
            now
        };
        jwt::access_jwt_for(&self.shared, user_id, client_id, scope, iat, now + lifetime_secs).unwrap_or_default()
    }

    /// Replaces the signing key with a new RSA key under the same `kid` (a provider that re-generated its key
    /// without renaming it): the JWKS serves only the new key, new tokens are signed with it, and a verifier that
    /// cached the old key sees a bad signature for a `kid` it knows. Generation blocks briefly.
    pub fn replace_signing_key_keeping_kid(&self) {
        let kid = self.current_kid();
        match IssuerKey::generate(kid) {
            Ok(key) => self.shared.lock().signing_key = Arc::new(key),
            Err(_) => tracing::warn!("could not generate a new emulator signing key"),
        }
    }

    /// The `kid` of the current signing key.
    pub fn current_kid(&self) -> String {
        self.shared.lock().signing_key.kid().to_owned()
    }

    /// The current public key as a PEM `PUBLIC KEY` (SPKI) document with
    /// `\n` line endings and a trailing newline: exactly the HMAC key used by
    /// [`IdTokenDefect::Hs256WithPublicKey`].
    pub fn public_key_pem(&self) -> String {
        self.shared.lock().signing_key.public_key_pem().to_owned()
    }

    /// Makes the token endpoint hostile (`None` restores normal service).
    pub fn set_token_failure(&self, failure: Option<TokenFailure>) {
        self.shared.lock().token_failure = failure;
    }

    /// Makes the discovery document and the JWKS answer `status` (with Ave's
    /// generic error body) instead of 200; `None` restores them. Failed
    /// answers do not count in [`Emulator::jwks_fetches`].
    pub fn set_metadata_failure(&self, status: Option<u16>) {
        self.shared.lock().metadata_failure = status;
    }

    /// Every token-endpoint call so far, oldest first.
    pub fn token_requests(&self) -> Vec<RecordedTokenRequest> {
        self.shared.lock().token_requests.clone()
    }

    /// Every token the token endpoint has handed out, in issuance order:
    /// for each successful response its `access_token`, `access_token_jwt`,
    /// `id_token` and `refresh_token` (those present). Meant for tests that
    /// check a client never stores Ave's tokens in clear. The emulator's
    /// lookup tables hold only SHA-256 digests; this list is a transcript.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_tokens.clone()
    }

    /// How many times `GET /.well-known/jwks.json` was served.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.lock().jwks_fetches
    }

    /// How many refresh-token families have been flagged for reuse (revoked).
    pub fn refresh_families_revoked(&self) -> usize {
        self.shared.lock().flagged_families.len()
    }

    /// Flags every refresh-token family, as reuse detection would: the next
    /// refresh with any of them gets `invalid_grant` "Refresh token revoked".
    pub fn revoke_all_refresh_families(&self) {
        let mut state = self.shared.lock();
        let families: Vec<u64> = state.refresh_tokens.values().map(|r| r.family_id).collect();
        state.flagged_families.extend(families);
    }

    /// How many times a refresh token arrived while another request carrying
    /// the same token was still being handled (a client presenting one token
    /// twice at the same time, which makes Ave revoke the family).
    pub fn concurrent_refresh_presentations(&self) -> usize {
        self.shared.lock().concurrent_refresh_presentations
    }

    /// Advertises `base` (e.g. a fault-injecting proxy in front of the
    /// emulator) instead of the server's own address for the token, userinfo
    /// and JWKS endpoints in discovery; `None` restores the default. The
    /// issuer and the sign-in page are unchanged.
    pub fn set_advertised_base_url(&self, base: Option<String>) {
        self.shared.lock().advertised_base_url = base;
    }

    /// How many refresh-grant requests were answered 200.
    pub fn successful_refreshes(&self) -> usize {
        self.shared
            .lock()
            .token_requests
            .iter()
            .filter(|r| r.grant_type.as_deref() == Some("refresh_token") && r.status == 200)
            .count()
    }

    /// Stops the server gracefully (waiting at most about two seconds for
    /// open connections) and waits for it to finish. Other clones of this
    /// handle keep working as values but the server is gone.
    pub async fn shutdown(self) {
        let sender = self
            .server
            .shutdown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
        let handle = self.server.handle.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(mut handle) = handle
            && tokio::time::timeout(Duration::from_secs(5), &mut handle).await.is_err()
        {
            handle.abort();
        }
    }
}

/// `http://HOST:PORT` for a bound address; unspecified addresses become the
/// matching loopback address.
fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("http://[{v6}]:{}", addr.port()),
    }
}
