//! The authorization-code flow with PKCE, from "Sign in" to a stored session.
//!
//! [`SignIn::start`] makes the Ave sign-in URL and the pending sign-in
//! (`pending`: state, nonce, S256 verifier, return path); [`SignIn::complete`]
//! consumes it at the callback: checks `state`, asks the code-exchange limiter,
//! marks the state used, exchanges the code, validates the id_token, ends the
//! sessions the browser held and stores the new one. The flow owns its types
//! (`PendingLogin` and its sealed form, `ReturnPath`); HTTP concerns (which
//! cookie carries what, redirects, status codes) stay in `http`.

pub mod pending;
pub mod return_path;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::ave::id_token::{self, NonceCheck};
use crate::ave::{AveClient, AveError, IdTokenError};
use crate::session::{AveTokens, SessionData, SessionHandle, SessionId, Sessions, SignedInFrom, StoreError};
use crate::traffic::rate_limit::{CodeExchangeLimiter, ExchangeOutcome};
use avemint_base::clock::UnixTime;
use avemint_base::secret::{Credential, Secret, random_bytes};

pub use pending::{LOGIN_TTL, PendingLogin, PendingLoginError, decode_login, encode_login};
pub use return_path::ReturnPath;

/// Longest `code` or `state` accepted from the callback query.
pub(crate) const MAX_PARAM_LEN: usize = 512;

/// Why a sign-in could not be completed. Messages never contain a code, token or state.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    #[error("the callback lacks `{0}`")]
    MissingParameter(&'static str),
    #[error("the callback parameter `{0}` is malformed")]
    MalformedParameter(&'static str),
    #[error("state does not match the sign-in started in this browser")]
    StateMismatch,
    #[error("this sign-in was already completed; start again")]
    StateReplayed,
    #[error("the user declined to sign in at Ave")]
    AccessDenied,
    #[error("Ave reported an error instead of a code")]
    ProviderError,
    #[error("Ave rejected the authorization code (`{0}`)")]
    CodeRejected(String),
    /// A misconfiguration, not the user's doing: Ave refused avemint itself at the token endpoint.
    #[error(
        "Ave rejected avemint's client credentials (`{0}`): check AVE_CLIENT_ID and AVE_CLIENT_SECRET against the app \
         registered at Ave"
    )]
    ClientRejected(String),
    #[error("Ave returned no id_token")]
    NoIdToken,
    #[error(transparent)]
    IdToken(#[from] IdTokenError),
    #[error(transparent)]
    Ave(#[from] AveError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a sign-in needs from the running service.
pub struct SignIn<'a> {
    pub ave: &'a AveClient,
    pub sessions: &'a Sessions,
    /// Failed code exchanges per client network, so junk codes cannot spend Ave's token budget.
    pub limiter: &'a CodeExchangeLimiter,
    pub redirect_uri: &'a str,
    pub scopes: &'a str,
}

/// What `start` produces: where to send the browser and what to remember.
pub struct Started {
    pub authorize_url: String,
    pub pending: PendingLogin,
}

fn random_token() -> Secret<String> {
    Secret::new(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// The S256 code challenge of a verifier (RFC 7636 §4.2).
pub(crate) fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

/// What Ave's sign-in page is asked to do besides signing in (its `prompt` parameter, `docs/ave-protocol.md` §1.1).
/// Only the two values Ave acts on: `none` and `login` are no-ops there (no silent-authentication error, no forced
/// re-authentication), so a sign-in never promises them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Ave shows its account choice instead of pre-selecting the identity used last (switching accounts).
    SelectAccount,
    /// Ave shows the consent screen even for an app the user already approved.
    Consent,
}

impl Prompt {
    /// The parameter's value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Prompt::SelectAccount => "select_account",
            Prompt::Consent => "consent",
        }
    }
}

/// How a completed callback ended (failures are `SignInError`s).
pub enum Completed {
    /// Signed in: `session` is stored (its cookie value is for the browser only).
    SignedIn {
        session: SessionId,
        /// The new session's `sid`, for logs.
        sid: SessionHandle,
        return_to: ReturnPath,
    },
    /// Nothing was stored or sent to Ave: the client's network failed too many code exchanges recently.
    NetworkRefused { retry_after: Duration },
}

impl SignIn<'_> {
    /// Begins a sign-in: fresh state, nonce and PKCE verifier; `prompt`, when given, is passed on to Ave.
    pub async fn start(
        &self,
        return_to: ReturnPath,
        prompt: Option<Prompt>,
        now: UnixTime,
    ) -> Result<Started, AveError> {
        let meta = self.ave.metadata().await?;
        let pending = PendingLogin {
            state: random_token(),
            nonce: random_token(),
            // 32 random bytes give a 43-character verifier, the RFC 7636 minimum length.
            verifier: random_token(),
            return_to,
            started_at: now,
        };
        let mut url = url::Url::parse(&meta.authorization_endpoint)
            .map_err(|_| AveError::Malformed("authorization_endpoint".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", self.ave.client_id())
            .append_pair("redirect_uri", self.redirect_uri)
            .append_pair("scope", self.scopes)
            .append_pair("state", pending.state.expose())
            .append_pair("nonce", pending.nonce.expose())
            .append_pair("code_challenge", &s256_challenge(pending.verifier.expose()))
            .append_pair("code_challenge_method", "S256");
        if let Some(prompt) = prompt {
            url.query_pairs_mut().append_pair("prompt", prompt.as_str());
        }
        Ok(Started {
            authorize_url: url.into(),
            pending,
        })
    }

    /// Completes the sign-in `pending` with Ave's `callback`, from `client`. `previous` are the sessions the
    /// browser holds: they end, so a session planted or left before this sign-in is never promoted.
    pub async fn complete(
        &self,
        pending: PendingLogin,
        callback: &Callback<'_>,
        client: IpAddr,
        signed_in_from: SignedInFrom,
        previous: &[SessionId],
        now: UnixTime,
    ) -> Result<Completed, SignInError> {
        check_state(&pending, callback)?;
        // Junk codes must not spend Ave's budget: a network whose code exchanges keep failing is refused
        // before anything is stored or sent.
        let mut permit = match self.limiter.admit(client).await {
            Ok(permit) => permit,
            Err(refused) => {
                return Ok(Completed::NetworkRefused {
                    retry_after: refused.retry_after,
                });
            }
        };
        let first_use = self
            .sessions
            .consume_login_state(pending.state.expose(), now + LOGIN_TTL)
            .await?;
        if !first_use {
            return Err(SignInError::StateReplayed);
        }
        permit.arm();
        let finished = finish(self.ave, &pending, callback.code, self.redirect_uri, self.scopes, now).await;
        permit.settle(match &finished {
            Ok(_) => ExchangeOutcome::Accepted,
            Err(SignInError::CodeRejected(_)) => ExchangeOutcome::Rejected,
            // No call made (no code), or Ave or the budget failed: not the client's doing.
            Err(_) => ExchangeOutcome::NotJudged,
        });
        let data = SessionData {
            signed_in_from,
            ..finished?
        };
        for old in previous {
            self.sessions.delete(&old.key()).await?;
        }
        let session = self.sessions.create(&data).await?;
        Ok(Completed::SignedIn {
            session,
            sid: data.sid,
            return_to: pending.return_to,
        })
    }
}

/// The callback's query, as received.
pub struct Callback<'a> {
    pub code: Option<&'a str>,
    pub state: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// Checks `state` against the pending sign-in (before anything else is done).
pub fn check_state(pending: &PendingLogin, callback: &Callback<'_>) -> Result<(), SignInError> {
    let state = callback.state.ok_or(SignInError::MissingParameter("state"))?;
    if state.len() > MAX_PARAM_LEN {
        return Err(SignInError::MalformedParameter("state"));
    }
    if !Credential::new(pending.state.expose()).matches(state) {
        return Err(SignInError::StateMismatch);
    }
    match callback.error {
        Some("access_denied") => Err(SignInError::AccessDenied),
        Some(_) => Err(SignInError::ProviderError),
        None => Ok(()),
    }
}

/// Exchanges the code and validates the id_token; returns the new session's data.
/// The caller has already checked and consumed `state`.
async fn finish(
    ave: &AveClient,
    pending: &PendingLogin,
    code: Option<&str>,
    redirect_uri: &str,
    scopes: &str,
    now: UnixTime,
) -> Result<SessionData, SignInError> {
    let code = code.ok_or(SignInError::MissingParameter("code"))?;
    if code.is_empty() || code.len() > MAX_PARAM_LEN {
        return Err(SignInError::MalformedParameter("code"));
    }
    let resp = ave
        .exchange_code(code, pending.verifier.expose(), redirect_uri)
        .await
        .map_err(|e| match e {
            // docs/ave-protocol.md §2.1: `invalid_client` is an unknown client id or a wrong secret.
            AveError::OAuth { code, .. } if matches!(code.as_str(), "invalid_client" | "unauthorized_client") => {
                SignInError::ClientRejected(code)
            }
            AveError::OAuth { code, .. } => SignInError::CodeRejected(code),
            other => SignInError::Ave(other),
        })?;
    let id_token = resp.id_token.ok_or(SignInError::NoIdToken)?;
    let validated = id_token::validate(ave, id_token.expose(), NonceCheck::Expect(pending.nonce.expose()), now).await?;
    let sub = validated.sub().to_owned();
    Ok(SessionData {
        sid: SessionHandle::generate(),
        sub,
        scope: resp.scope.unwrap_or_else(|| scopes.to_owned()),
        tokens: AveTokens {
            access_token: resp.access_token,
            access_token_jwt: resp.access_token_jwt,
            id_token,
            refresh_token: resp.refresh_token,
            access_expires_at: now + std::time::Duration::from_secs(resp.expires_in),
        },
        id_token_claims: validated.into_profile_claims(),
        user: resp.user,
        signed_in_from: SignedInFrom::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_base64url_sha256_without_padding() {
        // Expected value computed independently: base64url(sha256(verifier)), '=' stripped (Python hashlib).
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mJ92IgqUaH0bMDZ4dGcY5Hli6sUqU8"),
            "ZTkRZeoKVZ5eiQfw4gX00KR6c2Fkt6dTciXXRXzwZ14"
        );
    }

    #[test]
    fn state_checks() {
        let pending = PendingLogin {
            state: Secret::new("abc".into()),
            nonce: Secret::new("n".into()),
            verifier: Secret::new("v".into()),
            return_to: ReturnPath::default(),
            started_at: UnixTime::EPOCH,
        };
        let cb = |state, error| Callback {
            code: Some("c"),
            state,
            error,
        };
        assert!(check_state(&pending, &cb(Some("abc"), None)).is_ok());
        assert!(matches!(
            check_state(&pending, &cb(None, None)),
            Err(SignInError::MissingParameter("state"))
        ));
        assert!(matches!(
            check_state(&pending, &cb(Some("abd"), None)),
            Err(SignInError::StateMismatch)
        ));
        assert!(matches!(
            check_state(&pending, &cb(Some("abc"), Some("access_denied"))),
            Err(SignInError::AccessDenied)
        ));
        assert!(matches!(
            check_state(&pending, &cb(Some("xyz"), Some("access_denied"))),
            Err(SignInError::StateMismatch)
        ));
    }
}
