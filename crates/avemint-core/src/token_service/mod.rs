//! The token service (`POST /oauth/token`): app JWTs for clients that are not a browser session.
//!
//! Why it exists: native apps, APIs calling APIs on a user's behalf and background jobs all need app JWTs, and
//! every API should verify one kind of token from one JWKS. Three grants, each its own use case over the minter,
//! the sessions and Ave's client:
//!
//! * **Ave access token → app JWT** (RFC 8693, no client authentication: a native app keeps no secret). The
//!   subject token is an Ave `access_token_jwt`, validated as `ave::access_token` says; its `cid` must be in
//!   `[exchange] ave_client_ids`; the target profile (by `audience` or `resource`) must say
//!   `exchange_from_ave = true`. The token's `sub` is Ave's, `client_id` the Ave token's `cid`, no `sid` (there is
//!   no session), claims from the profile's map over the Ave token's claims (`{id_token.NAME}` reads them:
//!   `sub`, `scope`, `cid`, `uid`; no name or email, and Ave is not called for them), `exp` at most the Ave
//!   token's.
//! * **Delegation** (RFC 8693 with `act`; the caller authenticates as profile A with its `[profiles.exchange]`
//!   secret). The subject token is one of A's app JWTs of a live session; the target B must be in A's
//!   `may_exchange_to`. The new token has B's claims, rendered from the session as for a browser, the same `sub`,
//!   `sid` and `client_id`, `act: {"sub": <A's audience>}` (the subject's own `act` nested inside), and `exp` at
//!   most the subject's. Chains longer than [`MAX_DELEGATION_DEPTH`] actors are refused.
//! * **Client credentials** (a service profile authenticates with its `[profiles.client]` secret): `sub` and
//!   `client_id` are the profile's name, no `sid`, the profile's literal claims.
//!
//! Refusals that involve a credential or a subject token are counted per network by the HTTP layer (429 past the
//! limit). One audit line (target `avemint::audit`) per token issued: grant, profiles, `sub`, `client_id`, the
//! `act` chain; never a token or secret.

pub mod form;

use serde_json::{Map, Value, json};

use crate::ave::AveClient;
use crate::ave::access_token::{AccessTokenError, validate_access_token};
use crate::mint::verify::verify;
use crate::mint::{Issue, MintError, MintedToken, Minter, Profile, Profiles};
use crate::session::{Sessions, StoreError};
use avemint_base::clock::UnixTime;
pub use form::{Form, FormError};

/// `grant_type` of token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of client credentials (RFC 6749 §4.4).
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// Token type URIs (RFC 8693 §3).
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The most actors a delegated token's `act` chain may name (the new actor included): A → B → C → D.
pub const MAX_DELEGATION_DEPTH: usize = 4;
/// Longest subject token read, in bytes.
const MAX_SUBJECT_TOKEN: usize = 16 * 1024;

/// `[exchange]`: which Ave clients' access tokens may be exchanged.
#[derive(Debug, Clone, Default)]
pub struct ExchangeSettings {
    /// `ave_client_ids` (`AVEMINT_EXCHANGE_AVE_CLIENT_IDS`): Ave client ids (`cid`) whose access tokens may be
    /// exchanged; empty: exchanging Ave tokens is off.
    pub ave_client_ids: Vec<String>,
}

/// The grant a request asked for (the metrics' and audit line's `grant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials,
    AveExchange,
    Delegation,
    /// No or an unknown `grant_type`.
    Unknown,
}

impl Grant {
    /// The label (one of `avemint_base::metrics::TOKEN_GRANTS`).
    pub fn label(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::AveExchange => "token_exchange_ave",
            Grant::Delegation => "token_exchange_delegation",
            Grant::Unknown => "unknown",
        }
    }
}

/// Client credentials as presented (HTTP Basic or the form's `client_id` and `client_secret`).
pub struct Presented<'a> {
    pub client_id: &'a str,
    pub secret: &'a str,
}

/// A token the service issued.
pub struct Issued {
    pub token: MintedToken,
    /// `issued_token_type` of a token exchange (RFC 8693 §2.2.1); `None` for client credentials.
    pub issued_token_type: Option<&'static str>,
}

/// Why no token was issued. Descriptions name the check, never a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// 400 `invalid_request`: the request itself is wrong.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400 `invalid_request` (RFC 8693 §2.2.2): the subject token is invalid or unacceptable. Counted against the
    /// client's network.
    #[error("{0}")]
    SubjectRefused(String),
    /// 401 `invalid_client`: no, unknown or wrong client credentials. Counted against the client's network.
    #[error("{0}")]
    InvalidClient(&'static str),
    /// 400 `unauthorized_client`: the authenticated profile may not use this grant.
    #[error("{0}")]
    UnauthorizedClient(String),
    /// 400 `invalid_target` (RFC 8693 §2.2.2): no such audience, or not one this request may get. One answer for
    /// both.
    #[error("no token profile this request may get has this audience")]
    InvalidTarget,
    /// 400 `unsupported_grant_type`.
    #[error("grant_type must be `client_credentials` or `urn:ietf:params:oauth:grant-type:token-exchange`")]
    UnsupportedGrantType,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Mint(#[from] MintError),
    /// Ave's signing keys could not be loaded (503).
    #[error("Ave's signing keys could not be loaded")]
    AveKeys(crate::ave::AveError),
}

impl TokenError {
    /// The OAuth error code answered.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidRequest(_) | TokenError::SubjectRefused(_) => "invalid_request",
            TokenError::InvalidClient(_) => "invalid_client",
            TokenError::UnauthorizedClient(_) => "unauthorized_client",
            TokenError::InvalidTarget => "invalid_target",
            TokenError::UnsupportedGrantType => "unsupported_grant_type",
            TokenError::Store(_) | TokenError::AveKeys(_) => "temporarily_unavailable",
            TokenError::Mint(MintError::TooLarge { .. }) => "server_error",
            TokenError::Mint(_) => "temporarily_unavailable",
        }
    }

    /// True for the refusals counted against the client's network (wrong credentials, refused subject tokens).
    pub fn counts_as_failure(&self) -> bool {
        matches!(self, TokenError::InvalidClient(_) | TokenError::SubjectRefused(_))
    }
}

/// What the grants work with.
pub struct TokenService<'a> {
    pub minter: &'a Minter,
    pub sessions: &'a Sessions,
    pub ave: &'a AveClient,
    pub settings: &'a ExchangeSettings,
}

impl TokenService<'_> {
    /// The grant `form` asks for, given whether the client authenticated (a token exchange with credentials is a
    /// delegation, without them an exchange of an Ave token).
    pub fn grant_of(form: &Form, authenticated: bool) -> Grant {
        match form.get("grant_type") {
            Some(CLIENT_CREDENTIALS) => Grant::ClientCredentials,
            Some(TOKEN_EXCHANGE) if authenticated => Grant::Delegation,
            Some(TOKEN_EXCHANGE) => Grant::AveExchange,
            _ => Grant::Unknown,
        }
    }

    /// Answers one request: `form` is the parsed body, `client` the presented credentials, if any.
    #[tracing::instrument(name = "token_service.issue", skip_all, fields(grant = grant.label(), client = tracing::field::Empty, profile = tracing::field::Empty))]
    pub async fn issue(&self, grant: Grant, form: &Form, client: Option<&Presented<'_>>) -> Result<Issued, TokenError> {
        match (grant, client) {
            (Grant::Unknown, _) => match form.get("grant_type") {
                None => Err(TokenError::InvalidRequest("the form needs a `grant_type`".into())),
                Some(_) => Err(TokenError::UnsupportedGrantType),
            },
            (Grant::ClientCredentials, Some(client)) => self.client_credentials(form, client).await,
            (Grant::ClientCredentials, None) => Err(TokenError::InvalidClient(
                "client_credentials needs client authentication: a service profile's name and its secret",
            )),
            (Grant::Delegation, Some(client)) => self.delegation(form, client).await,
            (Grant::Delegation, None) | (Grant::AveExchange, _) => self.ave_exchange(form).await,
        }
    }

    /// The authenticated profile: `client_id` names a profile whose token-service credential is `secret`.
    fn authenticate<'p>(profiles: &'p Profiles, client: &Presented<'_>) -> Result<&'p Profile, TokenError> {
        const WRONG: &str = "authenticate with a token profile's name and its `[profiles.client]` or \
                             `[profiles.exchange]` secret";
        let profile = profiles
            .by_name(client.client_id)
            .ok_or(TokenError::InvalidClient(WRONG))?;
        match &profile.grants.credential {
            Some(c) if c.matches(client.secret) => {
                tracing::Span::current().record("client", profile.name.as_str());
                Ok(profile)
            }
            _ => Err(TokenError::InvalidClient(WRONG)),
        }
    }

    /// The profile named by `audience` and/or `resource` (both must agree): exactly one target.
    fn target<'p>(profiles: &'p Profiles, form: &Form, required: bool) -> Result<Option<&'p Profile>, TokenError> {
        let target = match (form.get("audience"), form.get("resource")) {
            (Some(a), Some(r)) if a != r => {
                return Err(TokenError::InvalidRequest(
                    "`audience` and `resource` name different APIs; send one".into(),
                ));
            }
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) if required => {
                return Err(TokenError::InvalidRequest(
                    "name the API the token is for: `audience` (or `resource`) with a profile's audience".into(),
                ));
            }
            (None, None) => return Ok(None),
        };
        profiles.by_audience(target).map(Some).ok_or(TokenError::InvalidTarget)
    }

    fn subject_token<'f>(form: &'f Form, types: &[&str]) -> Result<&'f str, TokenError> {
        let token = form
            .get("subject_token")
            .ok_or_else(|| TokenError::InvalidRequest("the form needs a `subject_token`".into()))?;
        match form.get("subject_token_type") {
            Some(t) if types.contains(&t) => {}
            Some(_) => {
                return Err(TokenError::InvalidRequest(format!(
                    "`subject_token_type` must be {} here",
                    types.join(" or ")
                )));
            }
            None => {
                return Err(TokenError::InvalidRequest(
                    "the form needs a `subject_token_type`".into(),
                ));
            }
        }
        if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
            return Err(TokenError::InvalidRequest(
                "`actor_token` is not supported: the authenticated client is the actor".into(),
            ));
        }
        if token.len() > MAX_SUBJECT_TOKEN {
            return Err(TokenError::SubjectRefused("the subject token is too long".into()));
        }
        Ok(token)
    }

    async fn client_credentials(&self, form: &Form, client: &Presented<'_>) -> Result<Issued, TokenError> {
        // One snapshot of the profiles for the whole request (a reload may replace them meanwhile).
        let profiles = self.minter.profiles();
        let profile = Self::authenticate(&profiles, client)?;
        if !profile.grants.service {
            return Err(TokenError::UnauthorizedClient(format!(
                "profile `{}` is not a service profile: client_credentials mints service profiles only",
                profile.name
            )));
        }
        // A service asks for its own audience only (or names none).
        if let Some(target) = Self::target(&profiles, form, false)?
            && target.name != profile.name
        {
            return Err(TokenError::InvalidTarget);
        }
        let empty = Map::new();
        let issue = Issue {
            sub: &profile.name,
            sid: None,
            client_id: &profile.name,
            id_token: &empty,
            user: None,
            act: None,
            not_after: None,
        };
        tracing::Span::current().record("profile", profile.name.as_str());
        let token = self.minter.mint_issue(profile, &issue).await?;
        audit(
            Grant::ClientCredentials,
            &profile.name,
            None,
            &profile.name,
            &profile.name,
            None,
        );
        Ok(Issued {
            token,
            issued_token_type: None,
        })
    }

    async fn ave_exchange(&self, form: &Form) -> Result<Issued, TokenError> {
        if self.settings.ave_client_ids.is_empty() {
            return Err(TokenError::InvalidClient(
                "exchanging Ave access tokens is off (no `[exchange] ave_client_ids`); a delegation needs client \
                 authentication",
            ));
        }
        let token = Self::subject_token(form, &[TYPE_JWT, TYPE_ACCESS_TOKEN])?;
        let profiles = self.minter.profiles();
        let profile = Self::target(&profiles, form, true)?.ok_or(TokenError::InvalidTarget)?;
        if !profile.grants.exchange_from_ave {
            return Err(TokenError::InvalidTarget);
        }
        tracing::Span::current().record("profile", profile.name.as_str());
        let ave = match validate_access_token(self.ave, token, self.sessions.now()).await {
            Ok(ave) => ave,
            Err(AccessTokenError::Keys(e)) => return Err(TokenError::AveKeys(e)),
            Err(e) => {
                return Err(TokenError::SubjectRefused(format!(
                    "the subject token is not a valid Ave access token: {e}"
                )));
            }
        };
        if !self.settings.ave_client_ids.contains(&ave.cid) {
            tracing::info!(
                cid = ave.cid.as_str(),
                "Ave access token of a client not in `[exchange] ave_client_ids`"
            );
            return Err(TokenError::SubjectRefused(
                "the subject token was issued to an Ave client whose tokens may not be exchanged".into(),
            ));
        }
        let issue = Issue {
            sub: &ave.sub,
            sid: None,
            client_id: &ave.cid,
            id_token: &ave.claims,
            user: None,
            act: None,
            not_after: Some(ave.exp),
        };
        let token = self.minter.mint_issue(profile, &issue).await?;
        audit(Grant::AveExchange, &profile.name, None, &ave.sub, &ave.cid, None);
        Ok(Issued {
            token,
            issued_token_type: Some(TYPE_ACCESS_TOKEN),
        })
    }

    async fn delegation(&self, form: &Form, client: &Presented<'_>) -> Result<Issued, TokenError> {
        let profiles = self.minter.profiles();
        let caller = Self::authenticate(&profiles, client)?;
        if caller.grants.may_exchange_to.is_empty() {
            return Err(TokenError::UnauthorizedClient(format!(
                "profile `{}` may not exchange tokens (no `[profiles.exchange]`)",
                caller.name
            )));
        }
        let token = Self::subject_token(form, &[TYPE_ACCESS_TOKEN])?;
        let target = Self::target(&profiles, form, true)?.ok_or(TokenError::InvalidTarget)?;
        if !caller.grants.may_exchange_to.contains(&target.name) {
            return Err(TokenError::InvalidTarget);
        }
        let now = self.sessions.now();
        let claims = verify(&self.minter.keys().current(), token, self.minter.issuer(), now)
            .map_err(|e| TokenError::SubjectRefused(format!("the subject token is not a valid app JWT: {e}")))?;
        if claims.get("aud").and_then(Value::as_str) != Some(caller.audience.as_str()) {
            return Err(TokenError::SubjectRefused(format!(
                "the subject token is not one of profile `{}`'s tokens",
                caller.name
            )));
        }
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let (Some(sub), Some(sid), Some(client_id)) = (text("sub"), text("sid"), text("client_id")) else {
            return Err(TokenError::SubjectRefused(
                "the subject token belongs to no session (a service's or an exchanged Ave token): only a \
                 signed-in user's token can be delegated"
                    .into(),
            ));
        };
        let previous = claims.get("act");
        if act_depth(previous) + 1 > MAX_DELEGATION_DEPTH {
            return Err(TokenError::SubjectRefused(format!(
                "the delegation chain would name more than {MAX_DELEGATION_DEPTH} actors"
            )));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(UnixTime::from_unsigned)
            .ok_or_else(|| TokenError::SubjectRefused("the subject token has no `exp`".into()))?;
        let Some(session) = self.sessions.live_by_sid(sub, sid).await? else {
            return Err(TokenError::SubjectRefused(
                "the subject token's session has ended".into(),
            ));
        };
        let act = match previous {
            Some(inner) => json!({"sub": caller.audience, "act": inner}),
            None => json!({"sub": caller.audience}),
        };
        tracing::Span::current().record("profile", target.name.as_str());
        let issue = Issue {
            sub,
            sid: Some(sid),
            client_id,
            id_token: &session.data.id_token_claims,
            user: session.data.user.as_ref(),
            act: Some(&act),
            not_after: Some(exp),
        };
        let token = self.minter.mint_issue(target, &issue).await?;
        audit(
            Grant::Delegation,
            &target.name,
            Some(&caller.name),
            sub,
            client_id,
            Some(&act),
        );
        Ok(Issued {
            token,
            issued_token_type: Some(TYPE_ACCESS_TOKEN),
        })
    }
}

/// How many actors an `act` claim names (nested `act` members).
fn act_depth(act: Option<&Value>) -> usize {
    let mut depth = 0;
    let mut next = act;
    while let Some(a) = next {
        depth += 1;
        next = a.get("act");
        if depth > MAX_DELEGATION_DEPTH {
            break;
        }
    }
    depth
}

/// The actors of an `act` claim, outermost (the latest) first: `orders-api > web-api`.
fn act_chain(act: Option<&Value>) -> String {
    let mut names = Vec::new();
    let mut next = act;
    while let Some(a) = next {
        names.push(a.get("sub").and_then(Value::as_str).unwrap_or("?").to_owned());
        next = a.get("act");
    }
    names.join(" > ")
}

/// The one audit line of an issued token (never the token).
fn audit(grant: Grant, profile: &str, from_profile: Option<&str>, sub: &str, client_id: &str, act: Option<&Value>) {
    tracing::info!(
        target: "avemint::audit",
        grant = grant.label(),
        profile,
        from_profile = from_profile.unwrap_or("-"),
        sub,
        client_id,
        act = %act_chain(act),
        "token issued"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn act_chains_are_counted_and_named_outermost_first() {
        assert_eq!(act_depth(None), 0);
        let one = json!({"sub": "a"});
        let two = json!({"sub": "b", "act": one});
        assert_eq!(act_depth(Some(&one)), 1);
        assert_eq!(act_depth(Some(&two)), 2);
        assert_eq!(act_chain(Some(&two)), "b > a");
        assert_eq!(act_chain(None), "");
        // A long (hostile) chain is counted only as far as the limit needs.
        let mut deep = json!({"sub": "x"});
        for _ in 0..100 {
            deep = json!({"sub": "x", "act": deep});
        }
        assert_eq!(act_depth(Some(&deep)), MAX_DELEGATION_DEPTH + 1);
    }

    #[test]
    fn the_grant_follows_grant_type_and_authentication() {
        let form = |body: &str| Form::parse(body.as_bytes()).expect("form");
        let cc = form("grant_type=client_credentials");
        assert_eq!(TokenService::grant_of(&cc, true), Grant::ClientCredentials);
        let te = form("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange");
        assert_eq!(TokenService::grant_of(&te, true), Grant::Delegation);
        assert_eq!(TokenService::grant_of(&te, false), Grant::AveExchange);
        assert_eq!(
            TokenService::grant_of(&form("grant_type=password"), true),
            Grant::Unknown
        );
        assert_eq!(TokenService::grant_of(&form(""), false), Grant::Unknown);
    }
}
