//! `POST /oauth/token`: the token service for clients that are not a browser session (RFC 6749 §3.2, RFC 8693).
//!
//! Why a module of its own: like introspection it is called by programs, not page script — no cookies, no CSRF
//! header, a form body, OAuth answers (RFC 6749 §5.1/§5.2, `Cache-Control: no-store` and `Pragma: no-cache`). The
//! grants are `avemint_core::token_service`'s; this module reads the client's credentials (HTTP Basic, or
//! `client_id`/`client_secret` in the form; never both), parses the form strictly (`token_service::form`),
//! counts refusals that involve a credential or a subject token per network (429 past the limit, as
//! introspection), records metrics per grant and outcome, and shapes the answer.

use std::sync::Arc;

use poem::web::Data;
use poem::{Request, RequestBody};
use poem_openapi::error::ContentTypeError;
use poem_openapi::param::Header;
use poem_openapi::payload::{Form as FormPayload, Json, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi};

use super::errors::{ErrorBody, error_body};
use super::introspect::parse_basic;
use super::{ApiTags, AppState};
use avemint_core::token_service::{Form, FormError, Grant, Presented, TokenError, TokenService};
use avemint_core::traffic::client_ip::ClientIp;
use avemint_core::traffic::rate_limit::CredentialVerdict;

/// The token endpoint.
pub(crate) struct OAuthTokenApi;

/// The form of a token request (`application/x-www-form-urlencoded`). A parameter sent twice is refused (400
/// `invalid_request`, RFC 6749 §3.1), one sent without a value counts as omitted.
#[derive(Debug, Object)]
pub(crate) struct OAuthTokenRequest {
    /// `client_credentials` (a service profile, authenticated) or `urn:ietf:params:oauth:grant-type:token-exchange`
    /// (RFC 8693: without client authentication an Ave access token is exchanged; authenticated as a token
    /// profile, one of that profile's app JWTs is delegated).
    pub grant_type: String,
    /// Token exchange: the Ave `access_token_jwt`, or the caller profile's app JWT (delegation).
    pub subject_token: Option<String>,
    /// Token exchange: `urn:ietf:params:oauth:token-type:jwt` or `urn:ietf:params:oauth:token-type:access_token`
    /// for an Ave token; `urn:ietf:params:oauth:token-type:access_token` for an app JWT.
    pub subject_token_type: Option<String>,
    /// The audience of the token profile wanted (required for token exchange; for client credentials, if sent,
    /// the service profile's own).
    pub audience: Option<String>,
    /// The same as `audience` (RFC 8707); when both are sent they must be equal.
    pub resource: Option<String>,
    /// Ignored: a profile's claims are configuration.
    pub scope: Option<String>,
    /// `client_secret_post`: the profile's name (instead of HTTP Basic). Ignored without `client_secret`.
    pub client_id: Option<String>,
    /// `client_secret_post`: the profile's secret (instead of HTTP Basic; never both).
    pub client_secret: Option<String>,
}

/// A token request's form, parsed by `token_service::form` (not the framework's lenient decoder); documented as
/// [`OAuthTokenRequest`].
pub(crate) struct TokenForm(Result<Form, FormError>);

impl<'a> ApiExtractor<'a> for TokenForm {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <FormPayload<OAuthTokenRequest> as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <FormPayload<OAuthTokenRequest> as Payload>::CONTENT_TYPE,
                schema: OAuthTokenRequest::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        match request.content_type() {
            Some(ct) if <FormPayload<OAuthTokenRequest> as Payload>::check_content_type(ct) => {}
            Some(ct) => {
                return Err(ContentTypeError::NotSupported {
                    content_type: ct.to_owned(),
                }
                .into());
            }
            None => return Err(ContentTypeError::ExpectContentType.into()),
        }
        let bytes = zeroize::Zeroizing::new(body.take()?.into_vec().await?);
        Ok(Self(Form::parse(&bytes)))
    }
}

/// A token (RFC 6749 §5.1, RFC 8693 §2.2.1).
#[derive(Object)]
pub(crate) struct TokenServiceBody {
    /// The signed app JWT (header `typ: at+jwt`).
    pub access_token: String,
    /// Token exchange only: always `urn:ietf:params:oauth:token-type:access_token`.
    #[oai(skip_serializing_if_is_none)]
    pub issued_token_type: Option<String>,
    /// Always `Bearer`.
    pub token_type: String,
    /// Lifetime in seconds (never past the subject token's `exp`).
    pub expires_in: u64,
}

/// Answers of `POST /oauth/token`. Every answer carries `Cache-Control: no-store` and `Pragma: no-cache`.
#[derive(ApiResponse)]
pub(crate) enum OAuthTokenResponse {
    /// The token.
    #[oai(status = 200)]
    Ok(Json<TokenServiceBody>),
    /// `invalid_request` (a malformed form, a missing or repeated parameter, an invalid or unacceptable subject
    /// token: tampered, expired, not the caller profile's, of an ended session, of an Ave client not allowed, a
    /// delegation chain too long), `unauthorized_client` (the profile may not use this grant), `invalid_target`
    /// (no profile with this audience, or not one this request may get), `unsupported_grant_type`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// Missing, unknown or wrong client credentials, or a token exchange without them while exchanging Ave tokens
    /// is off (`invalid_client`).
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>, #[oai(header = "WWW-Authenticate")] String),
    /// The body is not `application/x-www-form-urlencoded` (`invalid_request`). Answered by the framework before
    /// the handler runs (`errors::catch_all`); listed so the document names every answer.
    #[oai(status = 415)]
    #[allow(dead_code)]
    UnsupportedMediaType(Json<ErrorBody>),
    /// Wrong credentials or refused subject tokens again after the client's network (IPv4 /24, IPv6 /64 and /48)
    /// had 20 within a minute (`rate_limited`, with `Retry-After`): until they age out. Good requests are never
    /// limited.
    #[oai(status = 429)]
    TooManyRequests(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
    /// The token would exceed `max_token_bytes` (`server_error`).
    #[oai(status = 500)]
    Internal(Json<ErrorBody>),
    /// The session store, Ave's signing keys or a claims hook cannot be reached right now
    /// (`temporarily_unavailable`, with `Retry-After`).
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>, #[oai(header = "Retry-After")] String),
}

/// The client id and secret a request presented (HTTP Basic or the form).
type Credentials = (String, zeroize::Zeroizing<String>);

impl OAuthTokenResponse {
    fn from_error(e: TokenError) -> Self {
        let description = e.to_string();
        match e {
            TokenError::InvalidClient(_) => Self::Unauthorized(
                error_body("invalid_client", description),
                "Basic realm=\"avemint\", charset=\"UTF-8\"".to_owned(),
            ),
            TokenError::Store(e) => {
                e.log("token service");
                Self::Unavailable(error_body("temporarily_unavailable", e.public_reason()), "5".into())
            }
            TokenError::AveKeys(ref ave) => {
                tracing::warn!(error = %ave, "token service could not load Ave's signing keys");
                Self::Unavailable(error_body("temporarily_unavailable", description), "5".into())
            }
            TokenError::Mint(m) => match super::errors::ApiError::from(m) {
                super::errors::ApiError::Internal(body) => Self::Internal(body),
                super::errors::ApiError::Unavailable(body, retry) => {
                    Self::Unavailable(body, retry.unwrap_or_else(|| "1".into()))
                }
                other => {
                    tracing::error!(?other, "unexpected minting failure");
                    Self::Internal(error_body("server_error", "token signing failed"))
                }
            },
            other => Self::BadRequest(error_body(other.code(), description)),
        }
    }
}

#[OpenApi(tag = "ApiTags::TokenService")]
impl OAuthTokenApi {
    /// The token service (RFC 6749 §3.2) for clients that are not a browser session: `client_credentials` for
    /// service profiles (`service = true`), and token exchange (RFC 8693) of an Ave access token from a native app
    /// (no client authentication; its `cid` must be in `[exchange] ave_client_ids` and the target profile must say
    /// `exchange_from_ave = true`) or of a profile's app JWT for another profile's (delegation: authenticate as the
    /// subject token's profile; the target must be in its `may_exchange_to`; the new token carries `act` and lives
    /// only while the session does). Client authentication: HTTP Basic with a token profile's name and its
    /// `[profiles.client]` or `[profiles.exchange]` secret, each form-urlencoded (RFC 6749 §2.3.1), or the same as
    /// `client_id` and `client_secret` in the form; never both. Errors are RFC 6749 §5.2 `{error,
    /// error_description}`.
    #[oai(path = "/oauth/token", method = "post")]
    async fn token(
        &self,
        state: Data<&Arc<AppState>>,
        client: Data<&ClientIp>,
        /// `Basic base64(urlencode(profile) ":" urlencode(secret))`.
        #[oai(name = "Authorization")]
        authorization: Header<Option<String>>,
        body: TokenForm,
    ) -> OAuthTokenResponse {
        let form = match body.0 {
            Ok(form) => form,
            Err(e) => {
                avemint_base::metrics::token_service(Grant::Unknown.label(), "invalid_request");
                return OAuthTokenResponse::BadRequest(error_body("invalid_request", e.to_string()));
            }
        };
        let credentials = match credentials(authorization.0.as_deref(), &form) {
            Ok(c) => c,
            Err(e) => {
                let grant = TokenService::grant_of(&form, true);
                return answer_refusal(&state, &client, grant, TokenError::InvalidRequest(e.into())).await;
            }
        };
        let presented = credentials
            .as_ref()
            .map(|(id, secret)| Presented { client_id: id, secret });
        let grant = TokenService::grant_of(&form, presented.is_some());
        let service = TokenService {
            minter: &state.minter,
            sessions: &state.sessions,
            ave: &state.ave,
            settings: &state.exchange,
        };
        match service.issue(grant, &form, presented.as_ref()).await {
            Ok(issued) => {
                avemint_base::metrics::token_service(grant.label(), "issued");
                OAuthTokenResponse::Ok(Json(TokenServiceBody {
                    access_token: issued.token.token.expose().clone(),
                    issued_token_type: issued.issued_token_type.map(str::to_owned),
                    token_type: "Bearer".into(),
                    expires_in: issued.token.expires_in,
                }))
            }
            Err(e) => answer_refusal(&state, &client, grant, e).await,
        }
    }
}

/// The answer to a refusal: counted in the metrics; a credential or subject-token refusal also against the
/// client's network (429 once it is past the limit).
async fn answer_refusal(state: &AppState, client: &ClientIp, grant: Grant, e: TokenError) -> OAuthTokenResponse {
    if e.counts_as_failure() {
        tracing::info!(grant = grant.label(), error = e.code(), reason = %e, "token request refused");
        if let CredentialVerdict::Limited(retry_after) = state.token_limiter.failed(client.0).await {
            avemint_base::metrics::token_service(grant.label(), "rate_limited");
            let secs = retry_after.as_secs();
            return OAuthTokenResponse::TooManyRequests(
                error_body(
                    "rate_limited",
                    format!("too many refused token requests from this network; try again in {secs} s"),
                ),
                secs.to_string(),
            );
        }
    }
    avemint_base::metrics::token_service(grant.label(), e.code());
    OAuthTokenResponse::from_error(e)
}

/// The client's credentials: HTTP Basic, or `client_id` + `client_secret` in the form (RFC 6749 §2.3.1), never
/// both (§2.3: one method per request).
fn credentials(authorization: Option<&str>, form: &Form) -> Result<Option<Credentials>, &'static str> {
    let posted = form.get("client_secret");
    match (authorization, posted) {
        (Some(_), Some(_)) => Err("authenticate with one method: HTTP Basic or `client_secret` in the form, not both"),
        (Some(header), None) => Ok(Some(match parse_basic(header) {
            Ok((id, secret)) => (id, zeroize::Zeroizing::new(secret)),
            // An `Authorization` that is not Basic credentials is a failed authentication, not an anonymous call.
            Err(_) => (String::new(), zeroize::Zeroizing::new(String::new())),
        })),
        (None, Some(secret)) => match form.get("client_id") {
            Some(id) => Ok(Some((id.to_owned(), zeroize::Zeroizing::new(secret.to_owned())))),
            None => Err("`client_secret` needs `client_id`"),
        },
        (None, None) => Ok(None),
    }
}
