//! What the token endpoint answers: a response plus the `error` string the
//! emulator records for it, OAuth errors (`{"error","error_description"}`)
//! and the internal failure that becomes Ave's generic 500. Kept apart so the
//! grants and the schema checks build answers the same way.

use poem::Response;
use poem::http::StatusCode;
use serde::Serialize;

use crate::crypto::CryptoFailure;
use crate::respond::{self, json};

/// An answer plus the `error` string recorded for it.
pub(crate) struct Reply {
    pub(crate) response: Response,
    pub(crate) error: Option<String>,
}

impl Reply {
    pub(crate) fn ok(response: Response) -> Reply {
        Reply { response, error: None }
    }

    /// A plain `{"error": ...}` answer.
    pub(crate) fn error_only(status: StatusCode, error: &str) -> Reply {
        Reply {
            response: respond::error_only(status, error),
            error: Some(error.to_owned()),
        }
    }

    pub(crate) fn internal() -> Reply {
        Reply {
            response: respond::internal_error(),
            error: Some("Internal Server Error".to_owned()),
        }
    }
}

/// An OAuth error (`{"error","error_description"}`, §6.1).
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }

    pub(crate) fn invalid_grant(description: &str) -> OAuthError {
        OAuthError::new("invalid_grant", description)
    }

    pub(crate) fn invalid_client(description: &str) -> OAuthError {
        OAuthError::new("invalid_client", description)
    }

    pub(crate) fn invalid_request(description: &str) -> OAuthError {
        OAuthError::new("invalid_request", description)
    }

    pub(crate) fn into_reply(self) -> Reply {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: &'a str,
        }
        Reply {
            response: json(
                self.status,
                &Body {
                    error: self.error,
                    error_description: &self.description,
                },
            ),
            error: Some(self.error.to_owned()),
        }
    }
}

/// Internal failures become Ave's generic 500.
pub(crate) enum GrantError {
    OAuth(OAuthError),
    Internal,
}

impl From<OAuthError> for GrantError {
    fn from(error: OAuthError) -> Self {
        GrantError::OAuth(error)
    }
}

impl From<CryptoFailure> for GrantError {
    fn from(_: CryptoFailure) -> Self {
        GrantError::Internal
    }
}

impl GrantError {
    pub(crate) fn into_reply(self) -> Reply {
        match self {
            GrantError::OAuth(error) => error.into_reply(),
            GrantError::Internal => Reply::internal(),
        }
    }
}
