//! A downstream API that accepts avemint's app JWTs: what an API behind an SPA
//! signed in with avemint needs, in one file (poem + jsonwebtoken + reqwest).
//!
//! `Verifier` fetches avemint's JWKS once and caches the keys by `kid`. A token
//! with an unknown `kid` (avemint rotated its key) triggers a re-fetch, at most
//! one per `min_refetch_interval`, so a flood of made-up `kid`s cannot turn into
//! a flood of JWKS requests. Every token is checked for: ES256 only, header
//! `typ: at+jwt`, exact `iss` (avemint's public URL), `aud` (this API), `exp`.
//! A delegated token (from avemint's token service, RFC 8693) names the API
//! that asked for it in `act.sub` (earlier actors nested in `act.act`): it is
//! accepted only when that API is one this API trusts (`API_TRUSTED_ACTORS`,
//! comma-separated audiences; unset: delegated tokens are refused).
//!
//! Run it next to `avemint demo` (whose app JWTs have the demo URL as audience):
//!
//! ```sh
//! AVEMINT_URL=http://127.0.0.1:8080 API_AUDIENCE=http://127.0.0.1:8080 cargo run --example downstream
//! curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/hello
//! ```
//!
//! Optionally (`AVEMINT_INTROSPECTION_PROFILE` and `AVEMINT_INTROSPECTION_SECRET`
//! set), a token that verifies is also checked with avemint's introspection
//! endpoint (`POST /oauth/introspect`), so a token whose session ended (logout)
//! is refused before its `exp`. Answers are cached per token (`jti`) for a few
//! seconds (`AVEMINT_INTROSPECTION_CACHE_SECS`, default 5): that long, an ended
//! session's token may still pass, against one introspection per token per interval.
//!
//! `tests/downstream_example.rs` runs this file against a live avemint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use poem::http::{HeaderValue, StatusCode, header};
use poem::web::Data;
use poem::{EndpointExt, IntoResponse, Request, Response, Route, get, handler};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::RwLock;

/// The `typ` header of avemint's app JWTs.
pub const TOKEN_TYPE: &str = "at+jwt";

/// Why a token was refused. Never carries the token itself.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the token is not a JWT")]
    Malformed,
    #[error("the token header `typ` is not `at+jwt`")]
    WrongType,
    #[error("the token header has no `kid`")]
    NoKid,
    #[error("no key in avemint's JWKS has this token's `kid`")]
    UnknownKid,
    #[error("avemint's JWKS could not be fetched: {0}")]
    Jwks(String),
    #[error("the token failed verification: {0:?}")]
    Invalid(jsonwebtoken::errors::ErrorKind),
    #[error("the token was delegated by an API this API does not trust (`act.sub`)")]
    UntrustedActor,
    #[error("avemint says the token is no longer active (its session ended)")]
    Inactive,
    #[error("avemint's introspection endpoint could not be asked: {0}")]
    Introspection(String),
}

/// The optional introspection check: this API's profile credentials and the answer cache.
struct Introspection {
    url: String,
    /// `Basic base64(urlencode(profile) ":" urlencode(secret))` (RFC 6749 §2.3.1).
    authorization: String,
    cache_for: Duration,
    /// `jti` → (asked at, active).
    answers: tokio::sync::Mutex<HashMap<String, (Instant, bool)>>,
    asked: std::sync::atomic::AtomicU64,
}

/// The claims this API uses; every other claim (`iss`, `aud`, `exp`, …, already checked) is kept in `other`.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
    fetches: u64,
}

/// Verifies app JWTs against avemint's JWKS, with cached keys.
pub struct Verifier {
    http: reqwest::Client,
    jwks_url: String,
    issuer: String,
    audience: String,
    min_refetch_interval: Duration,
    cache: RwLock<KeyCache>,
    introspection: Option<Introspection>,
    /// Audiences of the APIs whose delegated tokens (`act.sub`) this API accepts.
    trusted_actors: Vec<String>,
}

impl Verifier {
    /// `avemint_url` is avemint's public URL (the `iss` of its tokens); `audience` is this API's audience.
    pub fn new(avemint_url: &str, audience: &str) -> Self {
        let issuer = avemint_url.trim_end_matches('/').to_owned();
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            jwks_url: format!("{issuer}/.well-known/jwks.json"),
            issuer,
            audience: audience.to_owned(),
            min_refetch_interval: Duration::from_secs(10),
            cache: RwLock::new(KeyCache {
                keys: HashMap::new(),
                fetched_at: None,
                fetches: 0,
            }),
            introspection: None,
            trusted_actors: Vec::new(),
        }
    }

    /// Accepts tokens delegated by these APIs (their audiences, as `act.sub` names them).
    pub fn with_trusted_actors(mut self, actors: impl IntoIterator<Item = String>) -> Self {
        self.trusted_actors = actors.into_iter().collect();
        self
    }

    /// Also asks avemint's introspection endpoint about every token that verifies, as token profile `profile`
    /// with its introspection `secret`, reusing an answer for `cache_for`.
    pub fn with_introspection(mut self, profile: &str, secret: &str, cache_for: Duration) -> Self {
        use base64::Engine as _;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let credentials = format!("{}:{}", enc(profile), enc(secret));
        self.introspection = Some(Introspection {
            url: format!("{}/oauth/introspect", self.issuer),
            authorization: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            ),
            cache_for,
            answers: tokio::sync::Mutex::new(HashMap::new()),
            asked: std::sync::atomic::AtomicU64::new(0),
        });
        self
    }

    /// How often avemint's introspection endpoint has been asked.
    pub fn introspections(&self) -> u64 {
        self.introspection
            .as_ref()
            .map_or(0, |i| i.asked.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether avemint still considers `token` (with id `jti`) active: a cached answer, or a fresh one.
    async fn still_active(&self, introspection: &Introspection, jti: &str, token: &str) -> Result<bool, VerifyError> {
        if let Some((at, active)) = introspection.answers.lock().await.get(jti)
            && at.elapsed() < introspection.cache_for
        {
            return Ok(*active);
        }
        introspection.asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer: Value = self
            .http
            .post(&introspection.url)
            .header(header::AUTHORIZATION, &introspection.authorization)
            .form(&[("token", token)])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| VerifyError::Introspection(e.to_string()))?
            .json()
            .await
            .map_err(|e| VerifyError::Introspection(e.to_string()))?;
        let active = answer["active"] == true;
        let mut answers = introspection.answers.lock().await;
        answers.retain(|_, (at, _)| at.elapsed() < introspection.cache_for);
        answers.insert(jti.to_owned(), (Instant::now(), active));
        Ok(active)
    }

    /// At most one JWKS fetch per `interval` (default 10 s).
    pub fn with_min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    /// How often the JWKS has been fetched.
    pub async fn jwks_fetches(&self) -> u64 {
        self.cache.read().await.fetches
    }

    /// Verifies `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.typ.as_deref() != Some(TOKEN_TYPE) {
            return Err(VerifyError::WrongType);
        }
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| VerifyError::Invalid(e.into_kind()))?;
        if let Some(act) = claims.other.get("act") {
            let actor = act.get("sub").and_then(Value::as_str).unwrap_or_default();
            if !self.trusted_actors.iter().any(|a| a == actor) {
                return Err(VerifyError::UntrustedActor);
            }
        }
        if let Some(introspection) = &self.introspection {
            let jti = claims.other.get("jti").and_then(Value::as_str).unwrap_or(token);
            if !self.still_active(introspection, jti, token).await? {
                return Err(VerifyError::Inactive);
            }
        }
        Ok(claims)
    }

    /// The key for `kid`, re-fetching the JWKS (rate limited) when it is unknown.
    async fn key(&self, kid: &str) -> Result<DecodingKey, VerifyError> {
        if let Some(key) = self.cache.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        let mut cache = self.cache.write().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        if cache
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.min_refetch_interval)
        {
            return Err(VerifyError::UnknownKid);
        }
        cache.fetched_at = Some(Instant::now());
        cache.fetches += 1;
        let set: JwkSet = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| VerifyError::Jwks(e.to_string()))?
            .json()
            .await
            .map_err(|e| VerifyError::Jwks(e.to_string()))?;
        cache.keys = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect();
        cache.keys.get(kid).cloned().ok_or(VerifyError::UnknownKid)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, poem::web::Json(body.clone())).into_response()
}

/// `GET /hello`: greets the bearer of a valid app JWT.
#[handler]
async fn hello(req: &Request, verifier: Data<&Arc<Verifier>>) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let result = match token {
        Some(token) => verifier.verify(token.trim()).await.map_err(|e| e.to_string()),
        None => Err("send the app JWT as `Authorization: Bearer <token>`".to_owned()),
    };
    match result {
        Ok(claims) => json_response(
            StatusCode::OK,
            &json!({ "hello": claims.name.as_deref().unwrap_or(&claims.sub), "sub": claims.sub }),
        ),
        Err(description) => {
            let mut resp = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "invalid_token", "error_description": description }),
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            resp
        }
    }
}

/// The API's routes.
pub fn app(verifier: Arc<Verifier>) -> impl poem::Endpoint {
    Route::new().at("/hello", get(hello)).data(verifier)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let avemint = std::env::var("AVEMINT_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let audience = std::env::var("API_AUDIENCE").unwrap_or_else(|_| avemint.clone());
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let trusted = std::env::var("API_TRUSTED_ACTORS").unwrap_or_default();
    let mut verifier = Verifier::new(&avemint, &audience)
        .with_trusted_actors(trusted.split(',').filter(|a| !a.is_empty()).map(str::to_owned));
    if let (Ok(profile), Ok(secret)) = (
        std::env::var("AVEMINT_INTROSPECTION_PROFILE"),
        std::env::var("AVEMINT_INTROSPECTION_SECRET"),
    ) {
        let cache_secs = std::env::var("AVEMINT_INTROSPECTION_CACHE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5);
        verifier = verifier.with_introspection(&profile, &secret, Duration::from_secs(cache_secs));
    }
    let verifier = Arc::new(verifier);
    println!("downstream API on http://{listen}/hello, trusting {avemint} for audience {audience}");
    poem::Server::new(poem::listener::TcpListener::bind(listen))
        .run(app(verifier))
        .await
}
