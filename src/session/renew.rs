//! `Renewer`: silent renewal of Ave's tokens that never loses a session.
//!
//! Ave rotates the refresh token on every use and revokes the whole family on
//! any reuse, with no grace window (`../shared/ave-protocol.md` §5). So:
//! - **in-process single-flight**: concurrent requests for one session share
//!   one refresh, which runs in its own task: a client hanging up, or a
//!   request that stops waiting (it gets a 503 or a token from the still-valid
//!   access token), never abandons a refresh half-way. A slow Ave answer is
//!   therefore stored when it arrives, not lost;
//! - **across instances**: the refresher holds the store's per-session lock,
//!   re-reads the row, and skips Ave if another instance already refreshed;
//! - **a refresh token is sent at most once**: the store's refresh marker is
//!   committed before the call and cleared with the outcome. A refresher that
//!   finds the marker set under the lock knows the previous holder died
//!   mid-refresh and drops that refresh token instead of re-sending it; an
//!   answer lost for good (Ave's refresh timeout) drops it too. The session
//!   then lives until Ave's access token expires, and ends with 401;
//! - the rotated refresh token is written (compare-and-swap on the version)
//!   before the new tokens are used;
//! - `invalid_grant` ends the session, with no retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use super::{Session, SessionData, SessionKey, Sessions, StoreError};
use crate::ave::id_token::{self, NonceCheck};
use crate::ave::{AveClient, AveError};
use crate::secret::Secret;

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
        tracing::error!(error = %e, "session store failure during renewal");
        RenewError::Unavailable {
            reason: "the session store is unavailable".into(),
            retry_after: Duration::from_secs(5),
        }
    }
}

type Outcome = Result<Arc<Session>, RenewError>;

/// Refreshes sessions whose Ave access token is about to expire.
pub struct Renewer {
    ave: Arc<AveClient>,
    sessions: Arc<Sessions>,
    skew: Duration,
    lock_wait: Duration,
    wait: Duration,
    in_flight: Mutex<HashMap<SessionKey, Shared<BoxFuture<'static, Outcome>>>>,
}

/// Unix seconds now.
fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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
        Arc::new(Self {
            ave,
            sessions,
            skew,
            lock_wait,
            wait,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The refresh skew.
    pub fn skew(&self) -> Duration {
        self.skew
    }

    /// Returns `session` if its access token is fresh enough, else a renewed
    /// session (or the current one, while its access token is still valid,
    /// when Ave is temporarily unavailable).
    pub async fn fresh(self: &Arc<Self>, session: Arc<Session>) -> Result<Arc<Session>, RenewError> {
        if !session.needs_refresh(now(), self.skew) {
            return Ok(session);
        }
        let key = session.key;
        let shared = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight
                .entry(key)
                .or_insert_with(|| {
                    let this = Arc::clone(self);
                    let task = tokio::spawn(async move {
                        let outcome = this.renew(key).await;
                        this.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        outcome
                    });
                    async move {
                        task.await.unwrap_or_else(|_| {
                            Err(RenewError::Unavailable {
                                reason: "renewal task failed".into(),
                                retry_after: Duration::from_secs(1),
                            })
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        match tokio::time::timeout(self.wait, shared).await {
            Ok(outcome) => outcome,
            // Ave is slow: answer from what we have; the refresh carries on and is stored when it ends.
            Err(_) if session.access_valid(now()) => Ok(session),
            Err(_) => Err(RenewError::Unavailable {
                reason: "Ave is slow to renew this session; try again shortly".into(),
                retry_after: Duration::from_secs(2),
            }),
        }
    }

    /// One refresh under the store's per-session lock.
    async fn renew(&self, key: SessionKey) -> Result<Arc<Session>, RenewError> {
        let waiting = std::time::Instant::now();
        let locked = self.sessions.store().lock_refresh(&key, self.lock_wait).await;
        crate::metrics::lock_wait("session_refresh", waiting.elapsed());
        let lock = match locked {
            Ok(lock) => lock,
            Err(StoreError::LockTimeout) => {
                crate::metrics::refresh_outcome("lock_timeout");
                // Another instance is still refreshing; serve what we have if it is valid.
                let current = self
                    .sessions
                    .load(&key, now())
                    .await?
                    .ok_or(RenewError::LoginRequired)?;
                return self
                    .fallback(
                        Arc::new(current),
                        "another instance is still renewing this session",
                        Duration::from_secs(1),
                    )
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let result = self.renew_locked(key).await;
        lock.release().await;
        result
    }

    async fn renew_locked(&self, key: SessionKey) -> Result<Arc<Session>, RenewError> {
        let t = now();
        let Some(current) = self.sessions.load(&key, t).await? else {
            self.sessions.forget(&key).await;
            return Err(RenewError::LoginRequired);
        };
        let current = Arc::new(current);
        if !current.needs_refresh(t, self.skew) {
            // Another instance (or an earlier holder) already renewed it.
            crate::metrics::refresh_outcome("already_renewed");
            self.sessions.remember(current.clone()).await;
            return Ok(current);
        }
        if current.refresh_started_at.is_some() {
            // We hold the lock, so whoever set the marker is gone without storing
            // the outcome (it died mid-refresh): never send that token again.
            tracing::warn!(session = ?key, "previous refresh outcome unknown; dropping the refresh token");
            crate::metrics::refresh_outcome("outcome_unknown");
            return self.without_refresh_token(&current).await;
        }
        let Some(refresh_token) = current
            .data
            .tokens
            .refresh_token
            .as_ref()
            .map(|t| Secret::new(t.expose().clone()))
        else {
            return self
                .fallback(current, "this session cannot be renewed", Duration::from_secs(1))
                .await;
        };
        if !self.sessions.store().begin_refresh(&key, current.version, t).await? {
            // Someone outside this lock holds the marker (several processes on one SQLite file).
            return self
                .fallback(
                    current,
                    "another process is renewing this session",
                    Duration::from_secs(1),
                )
                .await;
        }
        match self.ave.refresh(refresh_token.expose()).await {
            Ok(resp) => {
                let stored = self.store_refreshed(&current, resp).await;
                crate::metrics::refresh_outcome(if stored.is_ok() { "renewed" } else { "refused" });
                stored
            }
            // invalid_grant: the token is revoked, expired or unknown. access_denied /
            // enterprise_sso_required: Ave refuses this user's organisation context now.
            Err(AveError::OAuth { code, .. })
                if matches!(
                    code.as_str(),
                    "invalid_grant" | "access_denied" | "enterprise_sso_required"
                ) =>
            {
                tracing::info!(session = ?key, error_code = %code, "Ave ended the session on refresh");
                crate::metrics::refresh_outcome("ended");
                self.sessions.delete(&key).await?;
                Err(RenewError::LoginRequired)
            }
            Err(AveError::LostResponse(_)) => {
                // Ave may have rotated the token: it is spent either way.
                crate::metrics::refresh_outcome("lost_response");
                self.without_refresh_token(&current).await
            }
            Err(e) => {
                // The token provably did not reach Ave, or Ave refused before using it.
                crate::metrics::refresh_outcome("unavailable");
                self.sessions.store().abort_refresh(&key, current.version).await?;
                let retry = match &e {
                    AveError::RateLimited { retry_after } => retry_after.unwrap_or(Duration::from_secs(10)),
                    _ => Duration::from_secs(5),
                };
                self.fallback(current, &format!("Ave could not renew the session: {e}"), retry)
                    .await
            }
        }
    }

    /// Validates the refresh response and stores it before anyone uses it.
    async fn store_refreshed(
        &self,
        current: &Arc<Session>,
        resp: crate::ave::TokenResponse,
    ) -> Result<Arc<Session>, RenewError> {
        let t = now();
        let Some(id_token) = resp.id_token else {
            tracing::warn!(session = ?current.key, "Ave's refresh response has no id_token");
            self.without_refresh_token(current).await?;
            return Err(RenewError::Rejected("Ave's refresh response has no id_token".into()));
        };
        let validated = match id_token::validate(&self.ave, id_token.expose(), NonceCheck::NotExpected, t.max(0) as u64)
            .await
        {
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
        let expires_in = resp.expires_in.min(i64::MAX as u64 / 2) as i64;
        let data = SessionData {
            sid: old.sid.clone(),
            sub: old.sub.clone(),
            scope: old.scope.clone(),
            tokens: super::AveTokens {
                access_token: resp.access_token,
                access_token_jwt: resp.access_token_jwt,
                id_token,
                refresh_token: resp.refresh_token,
                access_expires_at: t + expires_in,
            },
            id_token_claims: validated.into_profile_claims(),
            // Ave does not resend `user` on refresh: keep the sign-in copy.
            user: old.user.clone(),
        };
        match self.sessions.replace(current, data).await? {
            Some(updated) => {
                tracing::debug!(session = ?current.key, "session renewed");
                Ok(updated)
            }
            None => {
                // Impossible while we hold the marker, unless the row was deleted (logout).
                Err(RenewError::LoginRequired)
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
        if session.access_valid(now()) {
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
