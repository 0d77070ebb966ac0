//! The session guard of every request that acts for a signed-in user: the `X-CSRF: 1` check, the session the
//! `__Host-avemint` cookie names, its renewal when Ave's access token is expiring, and who an app JWT minted for it
//! is about.
//!
//! Why its own module: the `/auth/*` handlers and the proxied routes (`proxy`) guard a session the same way; here
//! both use one copy without either borrowing from the other.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Header;

use super::AppState;
use super::cookies::{self, CookieChanges, SessionCookie};
use super::errors::{ApiError, store_unavailable};
use avemint_core::mint::Subject;
use avemint_core::session::{RenewError, Session};

/// The `X-CSRF` value that proves a request came from script on an allowed page.
pub(crate) const CSRF_VALUE: &str = "1";

/// `X-CSRF: 1`, or 403 `invalid_request`.
pub(crate) fn require_csrf(csrf: &Header<Option<String>>) -> Result<(), ApiError> {
    match csrf.0.as_deref() {
        Some(CSRF_VALUE) => Ok(()),
        _ => Err(ApiError::csrf()),
    }
}

/// The session the request's `__Host-avemint` cookie names. A cookie that names no live session (malformed, sent
/// twice, unknown or ended) is expired along with the 401.
pub(crate) async fn current_session(
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
pub(crate) async fn renewed(
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
pub(crate) fn subject(session: &Session) -> Subject<'_> {
    let data = &session.data;
    Subject {
        sub: &data.sub,
        sid: data.sid.as_str(),
        id_token: &data.id_token_claims,
        user: data.user.as_ref(),
    }
}
