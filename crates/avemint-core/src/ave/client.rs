//! `AveClient`: discovery, Ave's JWKS, and the JSON token endpoint.
//!
//! Ave's token endpoint accepts only a JSON body with the client secret inside
//! (no form encoding, no HTTP Basic), and its error bodies are not always
//! RFC 6749-shaped: schema failures carry `error` as an object
//! (`docs/ave-protocol.md` §1.2, §6). Failures are logged by status and
//! error code only; bodies, codes and tokens never reach a log line.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::backpressure::{Admission, BackPressure, CircuitState, Health, HoldBack};
use super::budget::{BudgetClass, BudgetSnapshot, Taken, TokenBudget};
use super::metadata::{AveMetadata, MetadataStatus};
use super::settings::ClientOptions;
use super::wire::{AveError, KeySet, ProviderMetadata, read_limited, transport};
use avemint_base::log_gate::{LogGate, OUTAGE_INTERVAL, warn_gated};
use avemint_base::metrics::{self, AveCall, AveFailure};
pub use avemint_base::reload::{LiveSecret, Reload, SecretFile, reload_one};
pub use avemint_base::secret::{Secret, SecretKind};
use avemint_base::web_url::Issuer;

/// Failed token-endpoint calls: one warning per grant and failure every 10 s, with a count (`log_gate`).
static TOKEN_FAILURES: LogGate<(&str, AveFailure)> = LogGate::new(OUTAGE_INTERVAL);

/// The parts of Ave's token response avemint keeps. Tokens are secrets from the moment they are parsed.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: Secret<String>,
    #[serde(default)]
    pub token_type: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub user: Option<Map<String, Value>>,
    #[serde(default)]
    pub access_token_jwt: Option<Secret<String>>,
    #[serde(default)]
    pub id_token: Option<Secret<String>>,
    #[serde(default)]
    pub refresh_token: Option<Secret<String>>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("has_id_token", &self.id_token.is_some())
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A confidential client of one Ave application.
pub struct AveClient {
    http: reqwest::Client,
    issuer: Issuer,
    client_id: String,
    /// Re-read from `AVE_CLIENT_SECRET_FILE` before each token request (Ave rotates with no overlap).
    client_secret: Arc<LiveSecret<Secret<String>>>,
    metadata: AveMetadata,
    budget: TokenBudget,
    back_pressure: BackPressure,
    options: ClientOptions,
}

/// A token-endpoint call that may go out now: Ave's back-pressure let it
/// through, the provider metadata is loaded and the budget has room for it.
/// Nothing has been sent yet. Dropped unsent, it gives its budget room (and
/// a half-open circuit's probe slot) back.
pub(crate) struct TokenPermit<'a> {
    client: &'a AveClient,
    meta: Arc<ProviderMetadata>,
    taken: Taken,
    admission: Admission,
    sent: bool,
}

impl Drop for TokenPermit<'_> {
    fn drop(&mut self) {
        if !self.sent {
            self.client.budget.refund(&self.taken);
            self.client.back_pressure.unused(self.admission);
        }
    }
}

/// The JSON body of a token request (camelCase, as Ave's schema names it).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest<'a> {
    grant_type: &'a str,
    client_id: &'a str,
    client_secret: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redirect_uri: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code_verifier: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

impl AveClient {
    /// Builds a client; nothing is fetched until first use.
    pub fn new(
        issuer: Issuer,
        client_id: String,
        client_secret: Secret<String>,
        options: ClientOptions,
    ) -> Result<Self, AveError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("avemint/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            .build()
            .map_err(|_| AveError::HttpClient)?;
        let metadata = AveMetadata::new(
            http.clone(),
            issuer.clone(),
            options.metadata_ttl,
            options.jwks_refetch_cooldown,
        );
        Ok(Self {
            http,
            issuer,
            client_id,
            client_secret: Arc::new(LiveSecret::fixed(SecretKind::ClientSecret, client_secret)),
            metadata,
            budget: TokenBudget::new(options.token_budget_per_minute, options.request_timeout),
            back_pressure: BackPressure::default(),
            options,
        })
    }

    /// Reads the client secret from `file` from now on: before each token request, and when the process's
    /// watcher sees it change or gets SIGHUP. `parse` is the start-up check.
    pub fn with_secret_file(
        mut self,
        file: Option<&SecretFile>,
        parse: avemint_base::reload::Parse<Secret<String>>,
    ) -> Self {
        let value = Secret::new(self.client_secret.current().expose().clone());
        self.client_secret = Arc::new(LiveSecret::new(
            SecretKind::ClientSecret,
            "AVE_CLIENT_SECRET_FILE",
            value,
            file,
            parse,
        ));
        self
    }

    /// The client secret's reloader, when it is read from a file.
    pub fn secret_reloader(&self) -> Option<Arc<dyn Reload>> {
        self.client_secret
            .is_watched()
            .then(|| self.client_secret.clone() as Arc<dyn Reload>)
    }

    /// The client secret to send now: its file is re-read first (a read of a small file, at most as often as the
    /// token budget allows calls), so a rotated secret is used at once.
    fn fresh_secret(&self) -> Arc<Secret<String>> {
        if self.client_secret.is_watched() {
            reload_one(self.client_secret.as_ref(), false);
        }
        self.client_secret.current()
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The registered client id.
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Ave's provider metadata, from cache or `{issuer}/.well-known/openid-configuration`.
    /// Once loaded it is always answered from memory: a due re-fetch runs in
    /// the background and a failed one keeps the last good copy.
    pub async fn metadata(&self) -> Result<Arc<ProviderMetadata>, AveError> {
        self.metadata.discovery().await
    }

    /// Ave's current key set (cached like `metadata`).
    pub async fn key_set(&self) -> Result<Arc<KeySet>, AveError> {
        self.metadata.key_set().await
    }

    /// Re-fetches the key set because a token named an unknown `kid`, or a known
    /// one whose key did not verify its signature; at most once per cooldown, so
    /// random kids or signatures cannot make avemint hammer Ave.
    /// Returns `None` when the cooldown forbids a fetch. A failed re-fetch
    /// keeps the keys in use.
    pub(crate) async fn refetch_key_set(&self) -> Result<Option<Arc<KeySet>>, AveError> {
        self.metadata.refetch_key_set().await
    }

    /// Whether Ave's discovery document and JWKS are loaded, their age and
    /// whether they are stale; fetches nothing.
    pub fn metadata_status(&self) -> MetadataStatus {
        self.metadata.status()
    }

    /// Exchanges an authorization code (with the PKCE verifier and the client secret).
    pub(crate) async fn exchange_code(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, AveError> {
        let permit = self.admit(AveCall::CodeExchange).await?;
        let secret = self.fresh_secret();
        let body = TokenRequest {
            grant_type: "authorization_code",
            client_id: &self.client_id,
            client_secret: secret.expose(),
            code: Some(code),
            redirect_uri: Some(redirect_uri),
            code_verifier: Some(code_verifier),
            refresh_token: None,
        };
        self.send(permit, &body, AveCall::CodeExchange, self.options.request_timeout)
            .await
    }

    /// Everything a refresh needs before it is sent: Ave's back-pressure lets it through, the metadata is loaded,
    /// the budget has room (waiting for it at most Ave's request timeout). Refused with
    /// `HeldBack` / `BudgetExhausted` (nothing sent, the refresh token untouched); the refresh timeout has not
    /// started.
    pub(crate) async fn admit_refresh(&self) -> Result<TokenPermit<'_>, AveError> {
        self.admit(AveCall::Refresh).await
    }

    /// Uses a refresh token with a permit from `admit_refresh`. Ave rotates it on every use: the caller must
    /// store the new one before anything else, and must never send this one again while Ave may still be
    /// processing this call. The answer is awaited for the refresh timeout from the moment the request is sent
    /// (connecting included): the call is over at Ave's side by then, whatever its outcome.
    ///
    /// Ave checks the client secret before it rotates the refresh token (docs/ave-protocol.md §2.2), so an
    /// `invalid_client` answer consumed nothing: if the secret file changed meanwhile (a rotation racing this call),
    /// the call is made once more with the new secret, within the same refresh timeout (not at all when less
    /// than a second of it is left).
    pub(crate) async fn refresh(
        &self,
        permit: TokenPermit<'_>,
        refresh_token: &str,
    ) -> Result<TokenResponse, AveError> {
        let answer_by = Instant::now() + self.options.refresh_timeout;
        let sent = self.fresh_secret();
        let result = self
            .refresh_with(permit, refresh_token, &sent, self.options.refresh_timeout)
            .await;
        match result {
            Err(AveError::OAuth { ref code, .. }) if code == "invalid_client" => {
                let now = self.fresh_secret();
                if now.expose() == sent.expose() {
                    return result;
                }
                // The retry is admitted like any call (held back or refused by the budget, the first answer stands).
                let Ok(permit) = self.admit(AveCall::Refresh).await else {
                    return result;
                };
                let left = answer_by.saturating_duration_since(Instant::now());
                if left < Duration::from_secs(1) {
                    return result;
                }
                tracing::info!("Ave refused the client secret and its file has changed: retrying with the new one");
                self.refresh_with(permit, refresh_token, &now, left).await
            }
            other => other,
        }
    }

    async fn refresh_with(
        &self,
        permit: TokenPermit<'_>,
        refresh_token: &str,
        secret: &Secret<String>,
        timeout: Duration,
    ) -> Result<TokenResponse, AveError> {
        let body = TokenRequest {
            grant_type: "refresh_token",
            client_id: &self.client_id,
            client_secret: secret.expose(),
            code: None,
            redirect_uri: None,
            code_verifier: None,
            refresh_token: Some(refresh_token),
        };
        self.send(permit, &body, AveCall::Refresh, timeout).await
    }

    /// Admits one token call: refused at once while Ave's back-pressure holds the client back; waits (unlocked,
    /// bounded) for budget room, a refusal logged, rate-limited, by the budget itself. Nothing is sent.
    async fn admit(&self, call: AveCall) -> Result<TokenPermit<'_>, AveError> {
        let held = |(cause, retry_after)| AveError::HeldBack { cause, retry_after };
        let admission = self.back_pressure.admit().map_err(held)?;
        let meta = match self.metadata().await {
            Ok(meta) => meta,
            Err(e) => {
                self.back_pressure.unused(admission);
                return Err(e);
            }
        };
        let class = match call {
            AveCall::Refresh => BudgetClass::Renewal,
            _ => BudgetClass::SignIn,
        };
        let budget = self
            .budget
            .acquire(class)
            .instrument(tracing::info_span!("ave.budget_wait", class = class.label()));
        let taken = match budget.await {
            Ok(taken) => taken,
            Err(exhausted) => {
                self.back_pressure.unused(admission);
                tracing::debug!(
                    grant = call.grant_type(),
                    "token-endpoint budget exhausted; not calling Ave"
                );
                return Err(AveError::BudgetExhausted {
                    retry_after: exhausted.retry_after,
                });
            }
        };
        let permit = TokenPermit {
            client: self,
            meta,
            taken,
            admission,
            sent: false,
        };
        // A pause may have started while this call waited for room.
        if !taken.waited.is_zero()
            && let (paused, _) = self.back_pressure.snapshot()
            && !paused.is_zero()
        {
            return Err(AveError::HeldBack {
                cause: HoldBack::Paused,
                retry_after: super::backpressure::whole_secs(paused),
            });
        }
        Ok(permit)
    }

    /// Sends one admitted token call; Ave's answer is awaited `timeout` from now.
    async fn send(
        &self,
        mut permit: TokenPermit<'_>,
        body: &TokenRequest<'_>,
        call: AveCall,
        timeout: Duration,
    ) -> Result<TokenResponse, AveError> {
        let grant = call.grant_type();
        permit.sent = true;
        let started = Instant::now();
        let span = tracing::info_span!(
            "ave.token",
            grant_type = grant,
            otel.kind = "client",
            http.status_code = tracing::field::Empty,
        );
        let result = self
            .token_request_timed(&permit.meta, body, grant, timeout, started)
            .instrument(span)
            .await;
        if let Err(AveError::Transport(_)) = &result {
            // The connection was never made: Ave saw nothing, so the call costs no budget.
            self.budget.refund(&permit.taken);
        }
        self.back_pressure.record(
            permit.admission,
            result.as_ref().err().map_or(Health::Well, AveError::health),
        );
        metrics::ave_call(call, started.elapsed(), result.as_ref().err().map(AveError::failure));
        result
    }

    async fn token_request_timed(
        &self,
        meta: &ProviderMetadata,
        body: &TokenRequest<'_>,
        grant: &'static str,
        timeout: Duration,
        started: Instant,
    ) -> Result<TokenResponse, AveError> {
        let resp = self
            .http
            .post(&meta.token_endpoint)
            .timeout(timeout)
            .headers(avemint_base::trace_context::headers())
            .json(body)
            .send()
            .await
            .map_err(|e| {
                // Only a connection never made (refused, DNS, TLS handshake, connect
                // timeout) proves the request never reached Ave; anything after it
                // (reset, stall, timeout) leaves the outcome unknown.
                let err = if e.is_connect() {
                    transport(e)
                } else {
                    AveError::LostResponse(transport(e).to_string())
                };
                warn_gated!(TOKEN_FAILURES, (grant, err.failure()), grant, error = %err, "Ave token request failed");
                err
            })?;
        let status = resp.status().as_u16();
        tracing::Span::current().record("http.status_code", status);
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = read_limited(resp).await.map_err(|e| {
            warn_gated!(
                TOKEN_FAILURES,
                (grant, AveFailure::LostResponse),
                grant,
                status,
                "Ave token response could not be read"
            );
            AveError::LostResponse(e.to_string())
        })?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if status == 200 {
            let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| {
                warn_gated!(
                    TOKEN_FAILURES,
                    (grant, AveFailure::Malformed),
                    grant,
                    status,
                    elapsed_ms,
                    "Ave token response is not a token response"
                );
                // Ave answered 200, so it acted on the request: the outcome is lost.
                AveError::LostResponse("token response lacks required fields".into())
            })?;
            tracing::debug!(grant, status, elapsed_ms, "Ave token request succeeded");
            return Ok(parsed);
        }
        let err = classify_error(status, &bytes, retry_after);
        match &err {
            AveError::OAuth { code, .. } => {
                warn_gated!(TOKEN_FAILURES, (grant, err.failure()), grant, status, error_code = %code, elapsed_ms, "Ave token request rejected")
            }
            _ => warn_gated!(
                TOKEN_FAILURES,
                (grant, err.failure()),
                grant,
                status,
                elapsed_ms,
                "Ave token request failed"
            ),
        }
        Err(err)
    }

    /// The token-endpoint calls per minute this process allows itself.
    pub fn token_budget_per_minute(&self) -> u32 {
        self.budget.per_minute()
    }

    /// How long a refresh waits for Ave's answer (`AVEMINT_AVE_REFRESH_TIMEOUT`).
    pub fn refresh_timeout(&self) -> Duration {
        self.options.refresh_timeout
    }

    /// The time left of the pause after Ave's 429 (zero when none) and the circuit's state.
    pub fn back_pressure(&self) -> (Duration, CircuitState) {
        self.back_pressure.snapshot()
    }

    /// Pauses every token call for `d`: a pause another instance learnt from Ave's 429.
    pub(crate) fn pause_for(&self, d: Duration) {
        self.back_pressure.pause_for(d);
    }

    /// The pause this process started after Ave's 429 and has not shared yet (the time left); taking it marks
    /// it shared.
    pub(crate) fn take_unshared_pause(&self) -> Option<Duration> {
        self.back_pressure.take_unshared_pause()
    }

    /// Use and room of the token-endpoint budget over the last minute, per class.
    pub fn token_budget(&self) -> BudgetSnapshot {
        self.budget.snapshot()
    }
}

/// Turns a non-200 token-endpoint answer into an `AveError`.
///
/// `error` may be an RFC 6749 code string, a human sentence (rate limiting),
/// or a zod error object (schema failure); only short code-like strings are
/// kept as codes.
pub fn classify_error(status: u16, body: &[u8], retry_after: Option<Duration>) -> AveError {
    if status == 429 {
        return AveError::RateLimited { retry_after };
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = match parsed.as_ref().and_then(|v| v.get("error")) {
        Some(Value::String(s)) if is_error_code(s) => Some(s.clone()),
        Some(Value::Object(_)) => Some("invalid_request".to_owned()),
        _ => None,
    };
    match code {
        Some(code) if (400..500).contains(&status) => AveError::OAuth { status, code },
        _ if status >= 500 => AveError::Server { status },
        _ => AveError::Malformed(format!("HTTP {status} without an OAuth error code")),
    }
}

fn is_error_code(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_ave_error_shapes() {
        let oauth = classify_error(
            400,
            br#"{"error":"invalid_grant","error_description":"Refresh token revoked"}"#,
            None,
        );
        assert!(matches!(oauth, AveError::OAuth { status: 400, ref code } if code == "invalid_grant"));
        let zod = classify_error(
            400,
            br#"{"success":false,"error":{"name":"ZodError","message":"[]"}}"#,
            None,
        );
        assert!(matches!(zod, AveError::OAuth { ref code, .. } if code == "invalid_request"));
        let limited = classify_error(
            429,
            br#"{"error":"Too many attempts. Try again shortly."}"#,
            Some(Duration::from_secs(7)),
        );
        assert!(matches!(limited, AveError::RateLimited { retry_after: Some(d) } if d.as_secs() == 7));
        assert!(matches!(
            classify_error(500, b"{\"error\":\"Internal Server Error\"}", None),
            AveError::Server { status: 500 }
        ));
        assert!(matches!(
            classify_error(503, b"<html>", None),
            AveError::Server { status: 503 }
        ));
        assert!(matches!(
            classify_error(404, b"{\"error\":\"Not Found\"}", None),
            AveError::Malformed(_)
        ));
        assert!(classify_error(502, b"", None).is_transient());
    }

    #[test]
    fn error_messages_carry_no_body_text() {
        let e = classify_error(
            400,
            br#"{"error":"invalid_grant","error_description":"rt_0123 secret"}"#,
            None,
        );
        assert!(!e.to_string().contains("rt_0123"));
    }
}
