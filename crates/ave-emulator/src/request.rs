//! Parsing a token request the way Ave's zod schema does (`docs/ave-protocol.md`
//! §2 and §6.2): snake/camel key normalisation (camelCase wins) and zod-shaped
//! 400 bodies, so that avemint's client is tested against Ave's real errors.

use poem::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::reply::Reply;
use crate::respond::json;

/// Request headers that matter to the token endpoint.
pub(crate) struct RequestMeta {
    pub(crate) content_type: Option<String>,
    pub(crate) origin: Option<String>,
}

/// The camelCase names Ave's schema knows; used to report `camel_case`.
pub(crate) const CAMEL_KEYS: [&str; 9] = [
    "grantType",
    "redirectUri",
    "clientId",
    "clientSecret",
    "codeVerifier",
    "refreshToken",
    "subjectToken",
    "requestedResource",
    "requestedScope",
];

pub(crate) const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub(crate) const GRANT_REFRESH_TOKEN: &str = "refresh_token";
pub(crate) const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

// ---------------------------------------------------------------------------
// Schema validation (zod-shaped, §2 and §6.2)
// ---------------------------------------------------------------------------

/// A zod 4 issue, keys in zod's order.
#[derive(Debug, Serialize)]
pub(crate) struct ZodIssue {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) expected: Option<&'static str>,
    pub(crate) code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) format: Option<&'static str>,
    pub(crate) path: Vec<&'static str>,
    pub(crate) message: String,
}

impl ZodIssue {
    pub(crate) fn invalid_type(expected: &'static str, path: Vec<&'static str>, got: Option<&Value>) -> Self {
        ZodIssue {
            expected: Some(expected),
            code: "invalid_type",
            format: None,
            path,
            message: format!("Invalid input: expected {expected}, received {}", js_type(got)),
        }
    }
}

/// JavaScript-ish type names as zod reports them.
pub(crate) fn js_type(value: Option<&Value>) -> &'static str {
    match value {
        None => "undefined",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// The raw zod-validator result: `{"success":false,"error":{"name":"ZodError","message":<pretty JSON of issues>}}`.
pub(crate) fn zod_error(issues: &[ZodIssue]) -> Reply {
    #[derive(Serialize)]
    struct ZodErrorBody<'a> {
        name: &'a str,
        message: String,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        success: bool,
        error: ZodErrorBody<'a>,
    }
    let Ok(message) = serde_json::to_string_pretty(issues) else {
        return Reply::internal();
    };
    Reply {
        response: json(
            StatusCode::BAD_REQUEST,
            &Body {
                success: false,
                error: ZodErrorBody {
                    name: "ZodError",
                    message,
                },
            },
        ),
        error: Some("ZodError".to_owned()),
    }
}

/// `raw[camel] ?? raw[snake]` (JavaScript nullish coalescing: a `null`
/// camelCase value falls through to the snake_case one).
pub(crate) fn pick<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    match object.get(camel) {
        Some(value) if !value.is_null() => Some(value),
        _ => object.get(snake),
    }
}

pub(crate) struct CodeGrant {
    pub(crate) code: String,
    pub(crate) redirect_uri: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
    pub(crate) code_verifier: Option<String>,
}

pub(crate) struct RefreshGrant {
    pub(crate) refresh_token: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: Option<String>,
}

pub(crate) enum TokenRequest {
    AuthorizationCode(CodeGrant),
    RefreshToken(RefreshGrant),
    TokenExchange { client_id: String },
}

impl TokenRequest {
    pub(crate) fn client_id(&self) -> &str {
        match self {
            TokenRequest::AuthorizationCode(grant) => &grant.client_id,
            TokenRequest::RefreshToken(grant) => &grant.client_id,
            TokenRequest::TokenExchange { client_id } => client_id,
        }
    }
}

/// Collects zod issues while reading fields.
pub(crate) struct Fields<'a> {
    pub(crate) object: &'a Map<String, Value>,
    pub(crate) issues: Vec<ZodIssue>,
}

impl<'a> Fields<'a> {
    pub(crate) fn required(&mut self, path: &'static str, value: Option<&'a Value>) -> String {
        match value {
            Some(Value::String(s)) => s.clone(),
            other => {
                self.issues.push(ZodIssue::invalid_type("string", vec![path], other));
                String::new()
            }
        }
    }

    pub(crate) fn optional(&mut self, path: &'static str, value: Option<&'a Value>) -> Option<String> {
        match value {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            other => {
                self.issues.push(ZodIssue::invalid_type("string", vec![path], other));
                None
            }
        }
    }

    pub(crate) fn camel(&self, camel: &str, snake: &str) -> Option<&'a Value> {
        pick(self.object, camel, snake)
    }
}

pub(crate) fn validate(value: &Value) -> Result<TokenRequest, Vec<ZodIssue>> {
    let Value::Object(object) = value else {
        return Err(vec![ZodIssue::invalid_type("object", Vec::new(), Some(value))]);
    };
    let mut fields = Fields {
        object,
        issues: Vec::new(),
    };
    let grant_type = fields.camel("grantType", "grant_type").and_then(Value::as_str);
    let request = match grant_type {
        Some(GRANT_AUTHORIZATION_CODE) => {
            let code = fields.required("code", object.get("code"));
            let redirect_uri = match fields.camel("redirectUri", "redirect_uri") {
                Some(Value::String(raw)) => match url::Url::parse(raw.trim()) {
                    Ok(url) => url.to_string(),
                    Err(_) => {
                        fields.issues.push(ZodIssue {
                            expected: None,
                            code: "invalid_format",
                            format: Some("url"),
                            path: vec!["redirectUri"],
                            message: "Invalid URL".to_owned(),
                        });
                        String::new()
                    }
                },
                other => fields.required("redirectUri", other),
            };
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            let client_secret = fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            let code_verifier = fields.optional("codeVerifier", fields.camel("codeVerifier", "code_verifier"));
            TokenRequest::AuthorizationCode(CodeGrant {
                code,
                redirect_uri,
                client_id,
                client_secret,
                code_verifier,
            })
        }
        Some(GRANT_REFRESH_TOKEN) => {
            let refresh_token = fields.required("refreshToken", fields.camel("refreshToken", "refresh_token"));
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            let client_secret = fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            TokenRequest::RefreshToken(RefreshGrant {
                refresh_token,
                client_id,
                client_secret,
            })
        }
        Some(GRANT_TOKEN_EXCHANGE) => {
            fields.required("subjectToken", fields.camel("subjectToken", "subject_token"));
            fields.required("requestedResource", fields.camel("requestedResource", "resource"));
            fields.required("requestedScope", fields.camel("requestedScope", "scope"));
            let client_id = fields.required("clientId", fields.camel("clientId", "client_id"));
            fields.optional("clientSecret", fields.camel("clientSecret", "client_secret"));
            match object.get("actor") {
                None | Some(Value::Object(_)) => {}
                other => fields
                    .issues
                    .push(ZodIssue::invalid_type("record", vec!["actor"], other)),
            }
            TokenRequest::TokenExchange { client_id }
        }
        _ => {
            return Err(vec![ZodIssue {
                expected: None,
                code: "invalid_union",
                format: None,
                path: vec!["grantType"],
                message: format!(
                    "Invalid discriminator value. Expected '{GRANT_AUTHORIZATION_CODE}' | '{GRANT_REFRESH_TOKEN}' | '{GRANT_TOKEN_EXCHANGE}'"
                ),
            }]);
        }
    };
    if fields.issues.is_empty() {
        Ok(request)
    } else {
        Err(fields.issues)
    }
}
