//! `Renewer`: silent renewal of Ave's tokens that never loses a session.
//!
//! Ave rotates the refresh token on every use and revokes the whole family on
//! any reuse, with no grace window (`docs/ave-protocol.md` §5). So:
//! - **in-process single-flight**: concurrent requests for one session share
//!   one refresh, which runs in its own task: a client hanging up, or a
//!   request that stops waiting (it gets a 503 or a token from the still-valid
//!   access token), never abandons a refresh half-way. A slow Ave answer is
//!   therefore stored when it arrives, not lost;
//! - **across instances, one presentation at a time**: the refresher takes the
//!   per-session lock, the row's refresh marker (`store`), in one short
//!   statement before sending the refresh token and releases it with the
//!   outcome. No database connection is held while Ave answers. A refresher
//!   that finds the marker held waits (polling the row, bounded) and uses the
//!   other instance's result; so no refresh token is ever presented to Ave
//!   twice at the same time;
//! - **an unknown outcome keeps the refresh token** (changed rule): if the
//!   call failed after the connection was made (reset, stall, timeout, an
//!   answer lost), Ave may or may not have rotated the token. If it did not,
//!   sending it again saves the session; if it did, the session is lost
//!   whatever avemint does, and the retry only learns it sooner, as
//!   `invalid_grant`. So the token is kept and retried, with a per-session
//!   back-off (`backoff`) while the access token is valid, once more shortly
//!   before it expires, and every few seconds after. A connection never made
//!   (refused, DNS, TLS handshake) is known not to have reached Ave;
//! - **a marker left by a dead holder means "retry with the same token"**: it
//!   is taken over once it is older than the refresh lease (Ave's refresh
//!   timeout plus a margin), when the dead holder's call is certainly over;
//! - the rotated refresh token is written (compare-and-swap on the version,
//!   retried through short store outages) before the new tokens are used;
//! - `invalid_grant` ends the session, with no retry;
//! - while the access token is valid, any failure (Ave or the store) still
//!   serves the session; once expired, a failure is a 503 with `Retry-After`;
//! - **shutdown**: `stop` makes the process start no new refresh, `drain`
//!   waits (bounded) for those in flight; one cut off is cancelled, its marker
//!   released and its token kept, so whoever comes next retries it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tracing::Instrument as _;

use super::backoff::Backoffs;
use super::{Session, SessionData, SessionRowKey, Sessions, StoreError};
use crate::ave::id_token::{self, NonceCheck};
use crate::ave::{AveClient, AveError};
use crate::clock::UnixTime;
use crate::log_gate::{LogGate, OUTAGE_INTERVAL, warn_gated};
use crate::secret::Secret;

/// A marker is taken over as a dead holder's this long after its refresh
/// timeout (clock differences between instances, whole-second markers).
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// How often a refresher waiting for another instance's refresh re-reads the row.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// Failed refreshes: one warning per cause (`avemint_session_refresh_total`'s outcome) every 10 s, with a count.
static REFRESH_FAILURES: LogGate<&'static str> = LogGate::new(OUTAGE_INTERVAL);
/// Waits between attempts to store renewed tokens through a store outage.
const STORE_RETRIES: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// When and how patiently sessions are renewed, and how long a decrypted
/// session is served from memory.
#[derive(Debug, Clone)]
pub struct RenewalSettings {
    /// Refresh when Ave's access token expires within this margin (`AVEMINT_REFRESH_SKEW`).
    pub skew: Duration,
    /// How long a request waits for a slow refresh before it is answered from
    /// the current access token (or with 503); the refresh itself goes on.
    pub wait: Duration,
    /// How long a decrypted session may be served from memory; bounds how
    /// late another instance notices a logout (`AVEMINT_SESSION_CACHE_TTL_MS`).
    pub session_cache_ttl: Duration,
}

impl Default for RenewalSettings {
    fn default() -> Self {
        Self {
            skew: Duration::from_secs(60),
            wait: Duration::from_secs(10),
            session_cache_ttl: Duration::from_millis(500),
        }
    }
}

/// Why renewal did not produce a usable session.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum RenewError {
    /// The session is over (Ave said `invalid_grant`, or it cannot be renewed any more).
    #[error("the session has ended; sign in again")]
    LoginRequired,
    /// Ave or the store is unavailable and the current access token has expired.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after: Duration },
    /// Ave answered with something that must not be used (e.g. an id_token for another subject).
    #[error("{0}")]
    Rejected(String),
}

impl From<StoreError> for RenewError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "session store failure during renewal");
        RenewError::Unavailable {
            reason: "the session store is unavailable".into(),
            retry_after: Duration::from_secs(5),
        }
    }
}

type Outcome = Result<Arc<Session>, RenewError>;

/// How taking the per-session lock ended.
enum Lock {
    /// Taken: the session, its refresh token and the marker written.
    Held(Arc<Session>, Secret<String>, UnixTime),
    /// The renewal ended without it (already renewed elsewhere, no refresh token, the lock stayed taken).
    Done(Result<Arc<Session>, RenewError>),
}

/// How a refresh call ended.
enum CallEnd {
    Answered(Result<crate::ave::TokenResponse, AveError>),
    /// Shutdown cut it off: the request is abandoned, its outcome unknown.
    Cancelled,
}

/// Refreshes sessions whose Ave access token is about to expire.
pub(crate) struct Renewer {
    ave: Arc<AveClient>,
    sessions: Arc<Sessions>,
    skew: Duration,
    lock_wait: Duration,
    wait: Duration,
    /// Ave's refresh timeout; every refresh call is over this long after it starts.
    refresh_timeout: Duration,
    in_flight: Mutex<HashMap<SessionRowKey, Shared<BoxFuture<'static, Outcome>>>>,
    backoff: Backoffs,
    /// Set by `stop`: no new refresh starts.
    stopping: AtomicBool,
    /// Set by `drain` when its bound is reached: refreshes in flight are cut off.
    cancel: tokio::sync::watch::Sender<bool>,
}

/// How long `session`'s access token stays valid after `now` (zero if expired).
fn access_left(session: &Session, now: UnixTime) -> Duration {
    session.data.tokens.access_expires_at.saturating_duration_since(now)
}

impl Renewer {
    /// `skew`: refresh when the access token expires within it. `lock_wait`
    /// bounds the wait for another instance's refresh of the same session.
    /// `wait`: how long a request waits for a refresh before it is answered
    /// from the current access token (or with 503); the refresh goes on.
    pub(crate) fn new(
        ave: Arc<AveClient>,
        sessions: Arc<Sessions>,
        skew: Duration,
        lock_wait: Duration,
        wait: Duration,
    ) -> Arc<Self> {
        let refresh_timeout = ave.refresh_timeout();
        Arc::new(Self {
            ave,
            sessions,
            skew,
            lock_wait,
            wait,
            refresh_timeout,
            in_flight: Mutex::new(HashMap::new()),
            backoff: Backoffs::default(),
            stopping: AtomicBool::new(false),
            cancel: tokio::sync::watch::channel(false).0,
        })
    }

    /// How long a refresh marker protects its holder's call: older markers
    /// were left by a holder that died, and are taken over.
    fn lease(&self) -> Duration {
        self.refresh_timeout + LEASE_MARGIN
    }

    /// Refreshes in flight in this process.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Shutdown, first step: start no new refresh (requests are served from
    /// valid access tokens, or get 503 with `Retry-After`).
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Shutdown, second step: waits until the refreshes in flight have ended,
    /// at most until `deadline`; then cuts off the rest (their markers are
    /// released and their refresh tokens kept, so the next request, on any
    /// instance, retries them). Returns how many were cut off.
    pub(crate) async fn drain(&self, deadline: Instant) -> usize {
        self.stop();
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut_off = self.in_flight();
        if cut_off > 0 {
            tracing::warn!(
                cut_off,
                "shutdown: cutting off refreshes still waiting for Ave; they will be retried"
            );
            self.cancel.send_replace(true);
            // Let them release their markers (one short statement each).
            let cleanup = Instant::now() + Duration::from_secs(2);
            while self.in_flight() > 0 && Instant::now() < cleanup {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            tracing::info!("shutdown: no refresh in flight");
        }
        cut_off
    }

    /// Returns `session` if its access token is fresh enough, else a renewed
    /// session (or the current one, while its access token is still valid,
    /// when Ave or the store is temporarily unavailable).
    pub(crate) async fn fresh(self: &Arc<Self>, session: Arc<Session>) -> Result<Arc<Session>, RenewError> {
        if !session.needs_refresh(self.sessions.now(), self.skew) {
            return Ok(session);
        }
        let key = session.key;
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match in_flight.get(&key) {
                Some(running) => running.clone(),
                None => {
                    if self.stopping.load(Ordering::SeqCst) {
                        drop(in_flight);
                        return serve_or_retry(
                            session,
                            self.sessions.now(),
                            "this instance is shutting down",
                            Duration::from_secs(1),
                        );
                    }
                    if let Some(left) = self.backoff.pending(&key) {
                        drop(in_flight);
                        return serve_or_retry(
                            session,
                            self.sessions.now(),
                            "Ave could not renew this session just now",
                            left,
                        );
                    }
                    let this = Arc::clone(self);
                    // A child of the request's span, so its lines carry the request id (and its trace goes on
                    // after the request stopped waiting). At `ERROR` level so no log filter drops it.
                    let span = tracing::error_span!(target: "avemint::session", "session.refresh");
                    let task = tokio::spawn(
                        async move {
                            // Leaves the in-flight map however the task ends (even by a panic).
                            let _done = InFlight(&this, key);
                            this.renew(key).await
                        }
                        .instrument(span),
                    );
                    let shared = async move {
                        task.await.unwrap_or_else(|_| {
                            Err(RenewError::Unavailable {
                                reason: "renewal task failed".into(),
                                retry_after: Duration::from_secs(1),
                            })
                        })
                    }
                    .boxed()
                    .shared();
                    in_flight.insert(key, shared.clone());
                    shared
                }
            }
        };
        let waited = tokio::time::timeout(self.wait, shared).instrument(tracing::info_span!("session.renewal_wait"));
        match waited.await {
            // A store or Ave failure while the access token is valid still serves the session.
            Ok(Err(RenewError::Unavailable { .. })) if session.access_valid(self.sessions.now()) => Ok(session),
            Ok(outcome) => outcome,
            // Ave is slow: answer from what we have; the refresh carries on and is stored when it ends.
            Err(_) => serve_or_retry(
                session,
                self.sessions.now(),
                "Ave is slow to renew this session; try again shortly",
                Duration::from_secs(2),
            ),
        }
    }

    /// One refresh: takes the per-session lock (the refresh marker), calls
    /// Ave, stores the outcome, releases the lock.
    async fn renew(&self, key: SessionRowKey) -> Result<Arc<Session>, RenewError> {
        let lock = self.lock(key).instrument(tracing::info_span!("session.lock_wait"));
        let (current, refresh_token, marker) = match lock.await? {
            Lock::Held(current, refresh_token, marker) => (current, refresh_token, marker),
            Lock::Done(outcome) => return outcome,
        };
        self.call_and_store(key, current, refresh_token, marker).await
    }

    /// Takes the per-session lock (the refresh marker), or ends the renewal without it.
    async fn lock(&self, key: SessionRowKey) -> Result<Lock, RenewError> {
        let waiting = Instant::now();
        let deadline = waiting + self.lock_wait;
        let lease = self.lease();
        let held = loop {
            let t = self.sessions.now();
            let Some(current) = self.sessions.load(&key).await? else {
                self.sessions.forget(&key).await;
                self.backoff.succeeded(&key);
                return Err(RenewError::LoginRequired);
            };
            let current = Arc::new(current);
            if !current.needs_refresh(t, self.skew) {
                // Another instance (or an earlier holder) already renewed it.
                crate::metrics::refresh_outcome("already_renewed");
                self.backoff.succeeded(&key);
                self.sessions.remember(current.clone()).await;
                return Ok(Lock::Done(Ok(current)));
            }
            let Some(refresh_token) = current
                .data
                .tokens
                .refresh_token
                .as_ref()
                .map(|t| Secret::new(t.expose().clone()))
            else {
                let outcome = self
                    .fallback(current, "this session cannot be renewed", Duration::from_secs(1))
                    .await;
                return Ok(Lock::Done(outcome));
            };
            let stale_before = t - lease;
            let held = current.refresh_started_at.is_some_and(|m| m >= stale_before);
            if !held
                && self
                    .sessions
                    .store()
                    .begin_refresh(&key, current.version, t, stale_before)
                    .await?
            {
                if current.refresh_started_at.is_some() {
                    // The holder is gone without storing an outcome (it died mid-refresh),
                    // and its call is over: the token may still be good, so send it again.
                    tracing::warn!(session = ?key, "previous refresh never finished; retrying with the same refresh token");
                    crate::metrics::refresh_outcome("retry_after_dead_holder");
                }
                break Lock::Held(current, refresh_token, t);
            }
            // Another instance (or process) holds the lock, or won a race for it.
            if Instant::now() >= deadline || self.stopping.load(Ordering::SeqCst) {
                crate::metrics::lock_wait("session_refresh", waiting.elapsed());
                crate::metrics::refresh_outcome("lock_timeout");
                let outcome = self
                    .fallback(
                        current,
                        "another instance is still renewing this session",
                        Duration::from_secs(1),
                    )
                    .await;
                return Ok(Lock::Done(outcome));
            }
            tokio::time::sleep(LOCK_POLL).await;
        };
        crate::metrics::lock_wait("session_refresh", waiting.elapsed());
        Ok(held)
    }

    /// Calls Ave with the lock held, and stores the outcome.
    async fn call_and_store(
        &self,
        key: SessionRowKey,
        current: Arc<Session>,
        refresh_token: Secret<String>,
        marker: UnixTime,
    ) -> Result<Arc<Session>, RenewError> {
        let mut cancel = self.cancel.subscribe();
        let call = tokio::time::timeout(self.refresh_timeout, self.ave.refresh(refresh_token.expose()));
        let end = tokio::select! {
            answered = call => CallEnd::Answered(answered.unwrap_or_else(|_| {
                Err(AveError::LostResponse("no answer within the refresh timeout".into()))
            })),
            _ = cancel.wait_for(|stop| *stop) => CallEnd::Cancelled,
        };
        match end {
            CallEnd::Answered(Ok(resp)) => {
                self.backoff.succeeded(&key);
                let stored = self.store_refreshed(&current, resp).await;
                crate::metrics::refresh_outcome(if stored.is_ok() { "renewed" } else { "refused" });
                stored
            }
            // invalid_grant: the token is revoked, expired, unknown, or was rotated by an
            // attempt whose answer was lost. access_denied / enterprise_sso_required: Ave
            // refuses this user's organisation context now.
            CallEnd::Answered(Err(AveError::OAuth { code, .. }))
                if matches!(
                    code.as_str(),
                    "invalid_grant" | "access_denied" | "enterprise_sso_required"
                ) =>
            {
                tracing::info!(session = ?key, error_code = %code, "Ave ended the session on refresh");
                crate::metrics::refresh_outcome("ended");
                self.backoff.succeeded(&key);
                self.sessions.delete(&key).await?;
                Err(RenewError::LoginRequired)
            }
            CallEnd::Answered(Err(e)) => {
                // The token did not reach Ave, Ave refused before using it, or the outcome
                // is unknown: it is kept either way, and retried after a back-off.
                let (label, hint) = match &e {
                    AveError::LostResponse(_) => ("outcome_unknown", None),
                    AveError::Transport(_) => ("unreachable", None),
                    AveError::RateLimited { retry_after } => ("rate_limited", *retry_after),
                    AveError::BudgetExhausted { retry_after } => ("rate_limited", Some(*retry_after)),
                    _ => ("unavailable", None),
                };
                crate::metrics::refresh_outcome(label);
                let delay = self
                    .backoff
                    .failed(&key, access_left(&current, self.sessions.now()), hint);
                warn_gated!(
                    REFRESH_FAILURES,
                    label,
                    cause = label,
                    session = ?key,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "refresh failed; refresh token kept, retrying after a back-off"
                );
                self.release(&key, &current, marker).await;
                self.fallback(current, &format!("Ave could not renew the session: {e}"), delay)
                    .await
            }
            CallEnd::Cancelled => {
                crate::metrics::refresh_outcome("cancelled");
                self.release(&key, &current, marker).await;
                self.fallback(current, "this instance is shutting down", Duration::from_secs(1))
                    .await
            }
        }
    }

    /// Releases the per-session lock without new tokens. If the store cannot
    /// be reached, the marker stays and is taken over when its lease ends.
    async fn release(&self, key: &SessionRowKey, current: &Session, marker: UnixTime) {
        if let Err(e) = self.sessions.store().abort_refresh(key, current.version, marker).await {
            tracing::warn!(session = ?key, error = %e, "refresh marker not released; it expires with its lease");
        }
    }

    /// `Sessions::replace`, retried through a short store outage: the tokens
    /// Ave just rotated are the only way to keep this session.
    async fn replace_retrying(&self, current: &Session, data: SessionData) -> Result<Option<Arc<Session>>, StoreError> {
        // `SessionData` holds secrets and is not `Clone`: seal once, retry the write.
        let mut data = Some(data);
        let mut delays = STORE_RETRIES.iter();
        loop {
            let Some(d) = data.take() else {
                return Err(StoreError::Unavailable("renewed tokens lost".into()));
            };
            match self.sessions.replace_keeping(current, d).await {
                Ok(done) => return Ok(done),
                Err((e, back)) => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(session = ?current.key, error = %e, "renewed tokens not stored yet; retrying");
                        data = Some(back);
                        tokio::time::sleep(*delay).await;
                    }
                    None => {
                        tracing::error!(session = ?current.key, error = %e, "renewed tokens could not be stored; this session will end");
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Validates the refresh response and stores it before anyone uses it.
    async fn store_refreshed(
        &self,
        current: &Arc<Session>,
        resp: crate::ave::TokenResponse,
    ) -> Result<Arc<Session>, RenewError> {
        let t = self.sessions.now();
        let Some(id_token) = resp.id_token else {
            tracing::warn!(session = ?current.key, "Ave's refresh response has no id_token");
            self.without_refresh_token(current).await?;
            return Err(RenewError::Rejected("Ave's refresh response has no id_token".into()));
        };
        let validated = match id_token::validate(&self.ave, id_token.expose(), NonceCheck::NotExpected, t).await {
            Ok(v) if v.sub() == current.data.sub => v,
            Ok(_) => {
                tracing::warn!(session = ?current.key, "refreshed id_token names another subject; tokens not swapped");
                self.without_refresh_token(current).await?;
                return Err(RenewError::Rejected(
                    "Ave's refreshed id_token names another user".into(),
                ));
            }
            Err(e) => {
                tracing::warn!(session = ?current.key, error = %e, "refreshed id_token invalid; tokens not swapped");
                self.without_refresh_token(current).await?;
                return Err(RenewError::Rejected(format!(
                    "Ave's refreshed id_token was refused: {e}"
                )));
            }
        };
        let old = &current.data;
        let data = SessionData {
            sid: old.sid.clone(),
            sub: old.sub.clone(),
            scope: old.scope.clone(),
            tokens: super::AveTokens {
                access_token: resp.access_token,
                access_token_jwt: resp.access_token_jwt,
                id_token,
                refresh_token: resp.refresh_token,
                access_expires_at: t + Duration::from_secs(resp.expires_in),
            },
            id_token_claims: validated.into_profile_claims(),
            // Ave does not resend `user` on refresh: keep the sign-in copy.
            user: old.user.clone(),
            signed_in_from: old.signed_in_from.clone(),
        };
        match self.replace_retrying(current, data).await? {
            Some(updated) => {
                tracing::debug!(session = ?current.key, "session renewed");
                Ok(updated)
            }
            None => {
                // The row moved on while we held the marker: deleted (logout), or an
                // earlier attempt of this very write landed although its answer was lost.
                match self.sessions.load(&current.key).await? {
                    Some(s) if !s.needs_refresh(self.sessions.now(), self.skew) => Ok(Arc::new(s)),
                    _ => Err(RenewError::LoginRequired),
                }
            }
        }
    }

    /// Stores the session without its refresh token (it is spent or unknown),
    /// then serves it while its access token lasts.
    async fn without_refresh_token(&self, current: &Arc<Session>) -> Result<Arc<Session>, RenewError> {
        let old = &current.data;
        let data = SessionData {
            sid: old.sid.clone(),
            sub: old.sub.clone(),
            scope: old.scope.clone(),
            tokens: super::AveTokens {
                access_token: Secret::new(old.tokens.access_token.expose().clone()),
                access_token_jwt: old
                    .tokens
                    .access_token_jwt
                    .as_ref()
                    .map(|t| Secret::new(t.expose().clone())),
                id_token: Secret::new(old.tokens.id_token.expose().clone()),
                refresh_token: None,
                access_expires_at: old.tokens.access_expires_at,
            },
            id_token_claims: old.id_token_claims.clone(),
            user: old.user.clone(),
            signed_in_from: old.signed_in_from.clone(),
        };
        let Some(updated) = self.sessions.replace(current, data).await? else {
            return Err(RenewError::LoginRequired);
        };
        self.fallback(updated, "this session can no longer be renewed", Duration::from_secs(1))
            .await
    }

    /// Serves `session` while Ave's access token is valid; otherwise ends it
    /// (no refresh token left) or asks the client to retry later.
    async fn fallback(
        &self,
        session: Arc<Session>,
        reason: &str,
        retry_after: Duration,
    ) -> Result<Arc<Session>, RenewError> {
        if session.access_valid(self.sessions.now()) {
            return Ok(session);
        }
        if session.data.tokens.refresh_token.is_none() {
            tracing::info!(session = ?session.key, "session ended: access token expired and no refresh token left");
            self.sessions.delete(&session.key).await?;
            return Err(RenewError::LoginRequired);
        }
        Err(RenewError::Unavailable {
            reason: reason.to_owned(),
            retry_after,
        })
    }
}

/// Removes a session's refresh from the in-flight map when dropped.
struct InFlight<'a>(&'a Renewer, SessionRowKey);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Serves `session` while its access token is valid; otherwise asks the client
/// to retry after `retry_after`.
fn serve_or_retry(
    session: Arc<Session>,
    now: UnixTime,
    reason: &str,
    retry_after: Duration,
) -> Result<Arc<Session>, RenewError> {
    if session.access_valid(now) {
        return Ok(session);
    }
    Err(RenewError::Unavailable {
        reason: reason.to_owned(),
        retry_after: retry_after.max(Duration::from_secs(1)),
    })
}
