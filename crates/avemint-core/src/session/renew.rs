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
//! - **nothing is sent that could not be answered in time**: a refresh is
//!   admitted by the Ave client first (Ave's back-pressure: the pause after a
//!   429 and the circuit; the provider metadata; room in the token budget,
//!   waited for at most Ave's request timeout). Refused, it is simply not
//!   started: 503 with `Retry-After` once the access token has expired,
//!   nothing sent, no marker taken, no back-off. Only then is the marker
//!   taken, and the refresh timeout starts when the request is sent, so a
//!   wait for the budget (or the store) never eats into the time Ave has to
//!   answer;
//! - **a marker records its deadline**: the time by which its call is over
//!   at Ave (sent right after the marker, answered within the refresh
//!   timeout, plus `LEASE_MARGIN` for clock differences). Nobody, on any
//!   instance, sends that session's refresh token before it;
//! - **an unknown outcome keeps the refresh token and the marker**: if the
//!   call failed after the connection was made (reset, stall, timeout, an
//!   answer lost), Ave may or may not have rotated the token, and may still be
//!   processing it. The marker stays until its deadline; then the token is
//!   sent again: if Ave did not rotate it, that saves the session; if it did,
//!   the session is lost whatever avemint does, and the retry only learns it
//!   sooner, as `invalid_grant`. Failures that end Ave's processing (an
//!   answer: 5xx, 429, a refusal) or never reached it (a connection never
//!   made) release the marker at once and back off per session (`backoff`):
//!   while the access token is valid, once more shortly before it expires,
//!   and every few seconds after;
//! - **Ave's back-pressure holds back the whole client**: a 429 pauses every
//!   token call of this instance for its `Retry-After`, and the pause is
//!   shared with the other instances on the store (`share_ave_pause`); a run
//!   of failures opens the Ave client's circuit (`crate::ave::backpressure`);
//! - **a marker past its deadline means "retry with the same token"**: its
//!   holder died, or its call's fate is unknown and is over by then;
//! - the rotated refresh token is written (compare-and-swap on the version,
//!   retried through short store outages) before the new tokens are used;
//! - `invalid_grant` ends the session, with no retry;
//! - while the access token is valid, any failure (Ave or the store) still
//!   serves the session; once expired, a failure is a 503 with `Retry-After`;
//! - **shutdown**: `stop` makes the process start no new refresh, `drain`
//!   waits for those in flight up to a bound that covers the refresh timeout
//!   (`startup::refresh_drain`), so every refresh sent before the signal is
//!   answered and stored. One still running at the bound (a stuck store) is
//!   cut off and keeps its marker until its deadline, as an unknown outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tracing::Instrument as _;

use super::backoff::Backoffs;
use super::{Session, SessionData, SessionRowHash, Sessions, StoreError};
use crate::ave::id_token::{self, NonceCheck};
use crate::ave::{AveClient, AveError, TokenPermit};
use avemint_base::clock::UnixTime;
use avemint_base::log_gate::{LogGate, OUTAGE_INTERVAL, warn_gated};
use avemint_base::secret::Secret;

/// A marker's deadline is this long after its refresh timeout (clock
/// differences between instances, whole-second markers, the send right after
/// the marker).
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// Taking the marker may not take longer than this (a wait for a store
/// connection): past it, the refresh is not sent (the deadline recorded would
/// not cover the call) and the marker is released.
const MAX_MARKER_STATEMENT: Duration = Duration::from_secs(5);
/// How often a refresher waiting for another instance's refresh re-reads the row.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// Failed refreshes: one warning per cause (`avemint_session_refresh_total`'s outcome) every 10 s, with a count.
pub static REFRESH_FAILURES: LogGate<&'static str> = LogGate::new(OUTAGE_INTERVAL);
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
pub enum RenewError {
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
        e.log("renewal");
        RenewError::Unavailable {
            reason: e.public_reason().into(),
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
pub struct Renewer {
    ave: Arc<AveClient>,
    sessions: Arc<Sessions>,
    skew: Duration,
    lock_wait: Duration,
    wait: Duration,
    /// Ave's refresh timeout; every refresh call is over this long after it starts.
    refresh_timeout: Duration,
    in_flight: Mutex<HashMap<SessionRowHash, Shared<BoxFuture<'static, Outcome>>>>,
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
    pub fn new(
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
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Shutdown, second step: waits until the refreshes in flight have ended,
    /// at most until `deadline` (which covers the refresh timeout, see
    /// `startup::refresh_drain`); then cuts off the rest: their outcome is
    /// unknown, so their markers stay until their deadlines and their refresh
    /// tokens are kept for whoever comes next after that. Returns how many
    /// were cut off.
    pub async fn drain(&self, deadline: Instant) -> usize {
        self.stop();
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut_off = self.in_flight();
        if cut_off > 0 {
            tracing::warn!(
                cut_off,
                "shutdown: cutting off refreshes still running past the drain; their markers stay until their deadlines"
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
    pub async fn fresh(self: &Arc<Self>, session: Arc<Session>) -> Result<Arc<Session>, RenewError> {
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

    /// One refresh: is admitted by the Ave client (nothing sent if not),
    /// takes the per-session lock (the refresh marker), calls Ave, stores the
    /// outcome, releases the lock (or keeps it until its deadline when the
    /// outcome is unknown).
    async fn renew(&self, key: SessionRowHash) -> Result<Arc<Session>, RenewError> {
        let permit = match self.ave.admit_refresh().await {
            Ok(permit) => permit,
            Err(e) => {
                let retry_after = e.not_sent_retry_after().unwrap_or(Duration::from_secs(5));
                avemint_base::metrics::refresh_outcome("not_started");
                tracing::debug!(session = ?key, error = %e, "refresh not started; nothing sent");
                return Err(RenewError::Unavailable {
                    reason: format!("Ave could not renew the session: {e}"),
                    retry_after,
                });
            }
        };
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RenewError::Unavailable {
                reason: "this instance is shutting down".into(),
                retry_after: Duration::from_secs(1),
            });
        }
        let lock = self.lock(key).instrument(tracing::info_span!("session.lock_wait"));
        let (current, refresh_token, marker) = match lock.await? {
            Lock::Held(current, refresh_token, marker) => (current, refresh_token, marker),
            Lock::Done(outcome) => return outcome,
        };
        self.call_and_store(key, current, refresh_token, marker, permit).await
    }

    /// Until when `current`'s marker keeps its refresh token from being sent
    /// (`None`: clear, or its holder's call is over).
    fn held_until(&self, current: &Session, now: UnixTime) -> Option<UnixTime> {
        let started = current.refresh_started_at?;
        let until = current.refresh_deadline.unwrap_or(started + self.lease());
        (until >= now).then_some(until)
    }

    /// Shares a pause this instance learnt from Ave's 429 with the other
    /// instances on the store, and learns theirs: one row, read and written
    /// by every instance (called every half second, and at once after a 429).
    pub async fn share_ave_pause(&self) {
        let store = self.sessions.store();
        let now = self.sessions.now();
        if let Some(left) = self.ave.take_unshared_pause() {
            let until = now + crate::ave::backpressure::whole_secs(left);
            if let Err(e) = store.share_ave_pause(until).await {
                tracing::warn!(error = %e, "Ave's pause could not be shared with the other instances");
            }
        }
        match store.ave_pause().await {
            Ok(Some(until)) if until > now => self.ave.pause_for(until.saturating_duration_since(now)),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "Ave's shared pause could not be read"),
        }
    }

    /// Takes the per-session lock (the refresh marker), or ends the renewal without it.
    async fn lock(&self, key: SessionRowHash) -> Result<Lock, RenewError> {
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
                avemint_base::metrics::refresh_outcome("already_renewed");
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
            let held = self.held_until(&current, t);
            if held.is_none() {
                let statement = Instant::now();
                let marker_deadline = t + self.refresh_timeout + LEASE_MARGIN;
                let taken = self
                    .sessions
                    .store()
                    .begin_refresh(&key, current.version, t, marker_deadline, stale_before)
                    .await?;
                if taken && statement.elapsed() > MAX_MARKER_STATEMENT {
                    // The deadline written no longer covers a call sent now: not started.
                    tracing::warn!(session = ?key, "refresh marker taken too late; refresh not sent");
                    self.release(&key, &current, t).await;
                    let outcome = self
                        .fallback(current, "the session store is slow", Duration::from_secs(1))
                        .await;
                    return Ok(Lock::Done(outcome));
                }
                if taken {
                    if current.refresh_started_at.is_some() {
                        // The holder is gone without storing an outcome (it died mid-refresh, or its call's fate
                        // is unknown), and its call is over: the token may still be good, so send it again.
                        tracing::warn!(session = ?key, "previous refresh never finished; retrying with the same refresh token");
                        avemint_base::metrics::refresh_outcome("retry_after_dead_holder");
                    }
                    break Lock::Held(current, refresh_token, t);
                }
            }
            // Another instance (or process) holds the lock, or won a race for it. Its deadline says nothing
            // about when its answer comes (a live holder's deadline is as far away as that of a call whose fate
            // is unknown), so the wait is the same for both; past it, `Retry-After` is what is left of the marker.
            if Instant::now() >= deadline || self.stopping.load(Ordering::SeqCst) {
                let retry_after = held.map_or(Duration::from_secs(1), |until| {
                    until.saturating_duration_since(t) + Duration::from_secs(1)
                });
                avemint_base::metrics::lock_wait("session_refresh", waiting.elapsed());
                avemint_base::metrics::refresh_outcome("lock_timeout");
                let outcome = self
                    .fallback(current, "another instance is still renewing this session", retry_after)
                    .await;
                return Ok(Lock::Done(outcome));
            }
            tokio::time::sleep(LOCK_POLL).await;
        };
        avemint_base::metrics::lock_wait("session_refresh", waiting.elapsed());
        Ok(held)
    }

    /// Calls Ave with the lock held, and stores the outcome.
    async fn call_and_store(
        &self,
        key: SessionRowHash,
        current: Arc<Session>,
        refresh_token: Secret<String>,
        marker: UnixTime,
        permit: TokenPermit<'_>,
    ) -> Result<Arc<Session>, RenewError> {
        let mut cancel = self.cancel.subscribe();
        // Bounded by the refresh timeout from the moment the request is sent (the Ave client's own timeout).
        let call = self.ave.refresh(permit, refresh_token.expose());
        let end = tokio::select! {
            answered = call => CallEnd::Answered(answered),
            _ = cancel.wait_for(|stop| *stop) => CallEnd::Cancelled,
        };
        let marker_deadline = marker + self.refresh_timeout + LEASE_MARGIN;
        match end {
            CallEnd::Answered(Ok(resp)) => {
                self.backoff.succeeded(&key);
                let stored = self.store_refreshed(&current, resp).await;
                avemint_base::metrics::refresh_outcome(if stored.is_ok() { "renewed" } else { "refused" });
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
                avemint_base::metrics::refresh_outcome("ended");
                self.backoff.succeeded(&key);
                self.sessions.delete(&key).await?;
                Err(RenewError::LoginRequired)
            }
            CallEnd::Answered(Err(e @ AveError::LostResponse(_))) => {
                // Sent, and no usable answer: Ave may have rotated the token, and may still be
                // processing it. The marker stays until its deadline; then the token is retried.
                avemint_base::metrics::refresh_outcome("outcome_unknown");
                let left = marker_deadline.saturating_duration_since(self.sessions.now());
                let delay = self.backoff.failed(
                    &key,
                    access_left(&current, self.sessions.now()),
                    Some(left + Duration::from_secs(1)),
                );
                tracing::warn!(
                    session = ?key,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "refresh outcome unknown; refresh token kept, not sent again before its marker's deadline"
                );
                self.fallback(current, &format!("Ave could not renew the session: {e}"), delay)
                    .await
            }
            CallEnd::Answered(Err(e)) => {
                // The token did not reach Ave, or Ave answered without using it (a refusal,
                // 429, 5xx): Ave is done with it. It is kept, and retried after a back-off.
                let (label, hint) = match &e {
                    AveError::Transport(_) => ("unreachable", None),
                    AveError::RateLimited { retry_after } => ("rate_limited", *retry_after),
                    AveError::BudgetExhausted { retry_after } | AveError::HeldBack { retry_after, .. } => {
                        ("not_started", Some(*retry_after))
                    }
                    _ => ("unavailable", None),
                };
                avemint_base::metrics::refresh_outcome(label);
                if matches!(e, AveError::RateLimited { .. }) {
                    self.share_ave_pause().await;
                }
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
                // Cut off by shutdown while Ave may still be processing it: an unknown outcome.
                avemint_base::metrics::refresh_outcome("cancelled");
                self.fallback(current, "this instance is shutting down", Duration::from_secs(1))
                    .await
            }
        }
    }

    /// Releases the per-session lock without new tokens. If the store cannot
    /// be reached, the marker stays and is taken over when its lease ends.
    async fn release(&self, key: &SessionRowHash, current: &Session, marker: UnixTime) {
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
        // Ave does not resend `user` on refresh: `with_tokens` keeps the sign-in copy.
        let data = current.data.with_tokens(
            super::AveTokens {
                access_token: resp.access_token,
                access_token_jwt: resp.access_token_jwt,
                id_token,
                refresh_token: resp.refresh_token,
                access_expires_at: t + Duration::from_secs(resp.expires_in),
            },
            validated.into_profile_claims(),
        );
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
        let data = old.with_tokens(
            super::AveTokens {
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
            old.id_token_claims.clone(),
        );
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
struct InFlight<'a>(&'a Renewer, SessionRowHash);

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
