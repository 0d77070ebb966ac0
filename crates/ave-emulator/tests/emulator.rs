//! Black-box tests: a started emulator driven over HTTP with reqwest.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

use ave_emulator::*;

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const FULL_SCOPE: &str = "openid profile email offline_access";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("reqwest client")
}

async fn start_with(config: EmulatorConfig) -> Emulator {
    let emulator = Emulator::start(config).await.expect("emulator starts");
    emulator.set_redirect_uris(vec![REDIRECT.to_owned()]);
    emulator
}

async fn start() -> Emulator {
    start_with(EmulatorConfig::default()).await
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let random43 = || {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut bytes).expect("random");
        URL_SAFE_NO_PAD.encode(bytes)
    };
    let verifier = format!("{}-{}", random43(), random43());
    let challenge = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    Pkce { verifier, challenge }
}

fn signin_url(emulator: &Emulator, params: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&emulator.signin_url()).expect("signin url");
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// `GET /signin` with auto-approve; returns the redirect `Location`.
async fn authorize(emulator: &Emulator, http: &reqwest::Client, extra: &[(&str, &str)]) -> url::Url {
    let mut params = vec![
        ("response_type", "code"),
        ("client_id", emulator.client_id()),
        ("redirect_uri", REDIRECT),
    ];
    params.extend_from_slice(extra);
    let response = http
        .get(signin_url(emulator, &params))
        .send()
        .await
        .expect("signin request");
    assert_eq!(response.status(), StatusCode::FOUND, "signin must redirect");
    let location = response
        .headers()
        .get("location")
        .expect("location")
        .to_str()
        .expect("ascii location");
    url::Url::parse(location).expect("location is a URL")
}

fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn code_for(emulator: &Emulator, http: &reqwest::Client, extra: &[(&str, &str)]) -> String {
    let location = authorize(emulator, http, extra).await;
    query_param(&location, "code").expect("code in redirect")
}

async fn post_token(emulator: &Emulator, http: &reqwest::Client, body: &Value) -> (StatusCode, Value) {
    let response = http
        .post(emulator.token_url())
        .json(body)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    let body = response.json::<Value>().await.expect("JSON body");
    (status, body)
}

fn assert_oauth_error(result: &(StatusCode, Value), error: &str, description: &str) {
    assert_eq!(result.0, StatusCode::BAD_REQUEST, "body: {}", result.1);
    assert_eq!(result.1, json!({"error": error, "error_description": description}));
}

/// Auto-approved code flow with S256 PKCE, secret and nonce; returns the
/// token response.
async fn login(emulator: &Emulator, http: &reqwest::Client, scope: &str, nonce: &str) -> Value {
    emulator.set_auto_approve(Some(emulator.users()[0].id.clone()));
    let pkce = pkce();
    let code = code_for(
        emulator,
        http,
        &[
            ("scope", scope),
            ("nonce", nonce),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (status, body) = post_token(
        emulator,
        http,
        &json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "code_verifier": pkce.verifier,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "login failed: {body}");
    body
}

async fn refresh(emulator: &Emulator, http: &reqwest::Client, token: &str) -> (StatusCode, Value) {
    post_token(
        emulator,
        http,
        &json!({
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": emulator.client_id(),
        }),
    )
    .await
}

fn str_field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} missing in {value}"))
}

/// Decodes one JWS segment as JSON.
fn segment(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("segment");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

fn raw_header(token: &str) -> String {
    let part = token.split('.').next().expect("header");
    String::from_utf8(URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("utf-8")
}

async fn jwks(emulator: &Emulator, http: &reqwest::Client) -> Value {
    http.get(emulator.jwks_url())
        .send()
        .await
        .expect("jwks request")
        .json::<Value>()
        .await
        .expect("jwks JSON")
}

async fn decoding_key(emulator: &Emulator, http: &reqwest::Client) -> (String, DecodingKey) {
    let set = jwks(emulator, http).await;
    let key = &set["keys"][0];
    let decoding = DecodingKey::from_rsa_components(str_field(key, "n"), str_field(key, "e")).expect("RSA JWK");
    (str_field(key, "kid").to_owned(), decoding)
}

fn validation(audience: &str, issuer: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation.leeway = 0;
    validation
}

fn now_secs() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()).expect("i64")
}

/// Asserts the keys of a JSON object appear in `keys` order in the raw text.
fn assert_key_order(raw: &str, keys: &[&str]) {
    let mut last = 0;
    for key in keys {
        let at = raw
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("{key} missing in {raw}"));
        assert!(at >= last, "{key} out of order in {raw}");
        last = at;
    }
}

#[tokio::test]
async fn discovery_jwks_and_not_found() {
    let emulator = start().await;
    let http = http();
    let base = emulator.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));
    assert_eq!(emulator.issuer(), base);

    let response = http.get(emulator.discovery_url()).send().await.expect("discovery");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        "public, max-age=3600, stale-while-revalidate=21600"
    );
    let raw = response.text().await.expect("text");
    let doc: Value = serde_json::from_str(&raw).expect("JSON");
    assert_key_order(
        &raw,
        &[
            "issuer",
            "authorization_endpoint",
            "token_endpoint",
            "userinfo_endpoint",
            "jwks_uri",
            "scopes_supported",
            "response_types_supported",
            "grant_types_supported",
            "subject_types_supported",
            "id_token_signing_alg_values_supported",
            "token_endpoint_auth_methods_supported",
        ],
    );
    assert_eq!(
        doc,
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/signin"),
            "token_endpoint": format!("{base}/api/oauth/token"),
            "userinfo_endpoint": format!("{base}/api/oauth/userinfo"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "scopes_supported": ["openid", "profile", "email", "offline_access", "user_id"],
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "urn:ietf:params:oauth:grant-type:token-exchange"
            ],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "none"],
        })
    );

    assert_eq!(emulator.jwks_fetches(), 0);
    let set = jwks(&emulator, &http).await;
    assert_eq!(emulator.jwks_fetches(), 1);
    let keys = set["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    let key = keys[0].as_object().expect("jwk");
    let mut names: Vec<&str> = key.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["alg", "e", "kid", "kty", "n", "use"]);
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["kid"], "ave-oidc-v1");
    assert_eq!(key["e"], "AQAB");
    assert_eq!(URL_SAFE_NO_PAD.decode(str_field(&keys[0], "n")).expect("n").len(), 256);
    assert!(emulator.public_key_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));

    for (method, path) in [
        (reqwest::Method::GET, "/nope"),
        (reqwest::Method::GET, "/api/oauth/token"),
        (reqwest::Method::POST, "/api/oauth/userinfo"),
    ] {
        let response = http
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        if path.starts_with("/api/") {
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, json!({"error": "Not Found"}));
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_is_json_only() {
    let emulator = start().await;
    let http = http();
    let url = emulator.token_url();
    let form = format!(
        "grant_type=refresh_token&refresh_token=rt_x&client_id={}",
        emulator.client_id()
    );

    for content_type in [Some("application/x-www-form-urlencoded"), Some("text/plain"), None] {
        let mut request = http.post(&url).body(form.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("token request");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["success"], false);
        assert!(body["error"].is_object(), "error must be an object: {body}");
        assert_eq!(body["error"]["name"], "ZodError");
        let issues: Value = serde_json::from_str(str_field(&body["error"], "message")).expect("issues JSON");
        assert_eq!(issues[0]["code"], "invalid_union");
        assert_eq!(issues[0]["path"], json!(["grantType"]));
        assert!(str_field(&issues[0], "message").starts_with("Invalid discriminator value"));
    }

    for broken in ["{\"grant_type\":", ""] {
        let response = http
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .body(broken)
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, json!({"error": "Internal Server Error"}));
    }

    // Missing client_id: zod issue on the camelCase path.
    let (status, body) = post_token(
        &emulator,
        &http,
        &json!({"grant_type": "refresh_token", "refresh_token": "rt_x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let issues: Value = serde_json::from_str(str_field(&body["error"], "message")).expect("issues JSON");
    assert_eq!(
        issues,
        json!([{
            "expected": "string",
            "code": "invalid_type",
            "path": ["clientId"],
            "message": "Invalid input: expected string, received undefined"
        }])
    );

    // JSON null for an optional field is a schema error too.
    let (status, body) = post_token(
        &emulator,
        &http,
        &json!({
            "grant_type": "refresh_token",
            "refresh_token": "rt_x",
            "client_id": emulator.client_id(),
            "client_secret": null,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(str_field(&body["error"], "message").contains("received null"));

    // Unsupported grant and a non-URL redirect_uri.
    let (status, body) = post_token(
        &emulator,
        &http,
        &json!({"grant_type": "password", "client_id": emulator.client_id()}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].is_object());
    let (status, body) = post_token(
        &emulator,
        &http,
        &json!({
            "grant_type": "authorization_code",
            "code": "x",
            "redirect_uri": "not a url",
            "client_id": emulator.client_id(),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(str_field(&body["error"], "message").contains("Invalid URL"));

    let records = emulator.token_requests();
    assert_eq!(records.len(), 9);
    assert_eq!(
        records[0].content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert!(records[0].keys.is_empty());
    assert_eq!(records[0].grant_type, None);
    assert_eq!(records[0].status, 400);
    assert_eq!(records[0].error.as_deref(), Some("ZodError"));
    assert_eq!(records[2].content_type, None);
    assert_eq!(records[3].status, 500);
    assert_eq!(records[5].keys, ["grant_type", "refresh_token"]);
    assert_eq!(records[5].grant_type.as_deref(), Some("refresh_token"));
    assert!(!records[5].camel_case);
    assert!(!records[5].authorization_header);
    emulator.shutdown().await;
}

#[tokio::test]
async fn code_exchange_with_s256_pkce_and_secret() {
    let emulator = start().await;
    let http = http();
    let ada = emulator.users()[0].clone();
    emulator.set_auto_approve(Some(ada.id.clone()));
    let pkce = pkce();
    let location = authorize(
        &emulator,
        &http,
        &[
            ("scope", FULL_SCOPE),
            ("state", "st-1"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "none"),
            ("max_age", "0"),
        ],
    )
    .await;
    assert!(location.as_str().starts_with(REDIRECT));
    let names: Vec<String> = location.query_pairs().map(|(k, _)| k.into_owned()).collect();
    assert_eq!(names, ["code", "state"]);
    assert_eq!(query_param(&location, "state").as_deref(), Some("st-1"));
    let code = query_param(&location, "code").expect("code");
    assert_eq!(code.len(), 43);

    let response = http
        .post(emulator.token_url())
        .json(&json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "code_verifier": pkce.verifier,
        }))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["content-type"], "application/json");
    let raw = response.text().await.expect("text");
    assert_key_order(
        &raw,
        &[
            "access_token",
            "token_type",
            "expires_in",
            "scope",
            "user",
            "access_token_jwt",
            "id_token",
            "refresh_token",
        ],
    );
    let body: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], FULL_SCOPE);
    assert_eq!(str_field(&body, "access_token").len(), 43);
    let refresh_token = str_field(&body, "refresh_token");
    assert_eq!(refresh_token.len(), 35);
    assert!(refresh_token.starts_with("rt_"));
    assert!(
        refresh_token[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(body.get("user_id").is_none());
    assert_eq!(
        body["user"],
        json!({
            "id": ada.id,
            "displayName": "Ada Lovelace",
            "handle": "ada",
            "email": "ada@example.com",
            "avatarUrl": null,
            "isPrimary": true,
        })
    );

    // The id_token verifies against the served JWKS.
    let id_token = str_field(&body, "id_token");
    assert_eq!(
        raw_header(id_token),
        r#"{"alg":"RS256","typ":"JWT","kid":"ave-oidc-v1"}"#
    );
    let (kid, key) = decoding_key(&emulator, &http).await;
    assert_eq!(kid, "ave-oidc-v1");
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation(emulator.client_id(), &emulator.issuer()))
        .expect("id_token verifies")
        .claims;
    let payload = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(id_token.split('.').nth(1).expect("payload"))
            .expect("b64"),
    )
    .expect("utf-8");
    assert_key_order(
        &payload,
        &[
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "azp",
            "nonce",
            "name",
            "preferred_username",
            "email",
            "picture",
        ],
    );
    assert_eq!(claims["sub"], ada.id.as_str());
    assert_eq!(claims["aud"], emulator.client_id());
    assert_eq!(claims["azp"], emulator.client_id());
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["auth_time"], claims["iat"]);
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["exp"].as_i64().expect("exp") - iat, 3600);
    assert!((iat - now_secs()).abs() <= 5);
    assert_eq!(claims["picture"], Value::Null);
    assert!(claims.get("picture").is_some(), "null picture must be kept");
    for absent in ["sid", "at_hash", "email_verified", "jti", "nbf"] {
        assert!(claims.get(absent).is_none(), "{absent} must be absent");
    }

    // The access_token_jwt too, with the resource audience.
    let access_claims = jsonwebtoken::decode::<Value>(
        str_field(&body, "access_token_jwt"),
        &key,
        &validation(&emulator.resource_audience(), &emulator.issuer()),
    )
    .expect("access_token_jwt verifies")
    .claims;
    assert_eq!(access_claims["cid"], emulator.client_id());
    assert_eq!(access_claims["scope"], FULL_SCOPE);
    assert!(access_claims.get("uid").is_none());

    // The transcript of issued tokens holds exactly what was handed out.
    assert_eq!(
        emulator.issued_tokens(),
        [
            str_field(&body, "access_token"),
            str_field(&body, "access_token_jwt"),
            str_field(&body, "id_token"),
            str_field(&body, "refresh_token"),
        ]
    );

    // Replaying the code fails.
    let replay = post_token(
        &emulator,
        &http,
        &json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
            "code_verifier": pkce.verifier,
        }),
    )
    .await;
    assert_oauth_error(&replay, "invalid_grant", "Authorization code not found");

    let records = emulator.token_requests();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(records[0].status, 200);
    assert_eq!(records[0].error, None);
    assert!(records[0].keys.contains(&"client_secret".to_owned()));
    assert_eq!(records[1].error.as_deref(), Some("invalid_grant"));
    emulator.shutdown().await;
}

#[tokio::test]
async fn pkce_and_client_authentication_rules() {
    let emulator = start().await;
    let http = http();
    emulator.set_auto_approve(Some(emulator.users()[1].id.clone()));
    let client_id = emulator.client_id().to_owned();
    let secret = emulator.client_secret().to_owned();
    let exchange = |code: String, extra: Value| {
        let mut body = json!({
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
        });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    };
    let s256 = |p: &Pkce| {
        vec![
            ("code_challenge".to_owned(), p.challenge.clone()),
            ("code_challenge_method".to_owned(), "S256".to_owned()),
        ]
    };
    async fn code_with(emulator: &Emulator, http: &reqwest::Client, extra: &[(String, String)]) -> String {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        code_for(emulator, http, &extra).await
    }

    // A stored challenge makes the verifier mandatory, even with a secret;
    // the failed exchange burns the code.
    let p = pkce();
    let code = code_with(&emulator, &http, &s256(&p)).await;
    let result = post_token(
        &emulator,
        &http,
        &exchange(code.clone(), json!({"client_secret": secret})),
    )
    .await;
    assert_oauth_error(&result, "invalid_request", "Code verifier required");
    let result = post_token(
        &emulator,
        &http,
        &exchange(code, json!({"client_secret": secret, "code_verifier": p.verifier})),
    )
    .await;
    assert_oauth_error(&result, "invalid_grant", "Authorization code not found");

    // Mismatch and malformed verifiers.
    let code = code_with(&emulator, &http, &s256(&p)).await;
    let other = pkce();
    let result = post_token(
        &emulator,
        &http,
        &exchange(code, json!({"code_verifier": other.verifier})),
    )
    .await;
    assert_oauth_error(&result, "invalid_grant", "Code verifier mismatch");
    let code = code_with(&emulator, &http, &s256(&p)).await;
    let result = post_token(&emulator, &http, &exchange(code, json!({"code_verifier": "short"}))).await;
    assert_oauth_error(
        &result,
        "invalid_request",
        "Code verifier must be 43-128 characters and use the PKCE character set",
    );
    // A wrong secret is reported before PKCE.
    let code = code_with(&emulator, &http, &s256(&p)).await;
    let result = post_token(
        &emulator,
        &http,
        &exchange(code, json!({"client_secret": "nope", "code_verifier": p.verifier})),
    )
    .await;
    assert_oauth_error(&result, "invalid_client", "Invalid client secret");

    // PKCE alone authenticates (and still yields a refresh token).
    let code = code_with(
        &emulator,
        &http,
        &[
            ("scope".to_owned(), FULL_SCOPE.to_owned()),
            ("code_challenge".to_owned(), p.challenge.clone()),
            ("code_challenge_method".to_owned(), "S256".to_owned()),
        ],
    )
    .await;
    let (status, body) = post_token(&emulator, &http, &exchange(code, json!({"code_verifier": p.verifier}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["refresh_token"].is_string());

    // Lowercase "s256" is discarded: the challenge is compared as plain.
    let code = code_with(
        &emulator,
        &http,
        &[
            ("code_challenge".to_owned(), p.challenge.clone()),
            ("code_challenge_method".to_owned(), "s256".to_owned()),
        ],
    )
    .await;
    let result = post_token(&emulator, &http, &exchange(code, json!({"code_verifier": p.verifier}))).await;
    assert_oauth_error(&result, "invalid_grant", "Code verifier mismatch");
    let code = code_with(
        &emulator,
        &http,
        &[
            ("code_challenge".to_owned(), p.challenge.clone()),
            ("code_challenge_method".to_owned(), "s256".to_owned()),
        ],
    )
    .await;
    let (status, _) = post_token(&emulator, &http, &exchange(code, json!({"code_verifier": p.challenge}))).await;
    assert_eq!(status, StatusCode::OK);

    // No PKCE and no secret; wrong secret; redirect mismatch burns the code.
    let code = code_with(&emulator, &http, &[]).await;
    let result = post_token(&emulator, &http, &exchange(code, json!({"client_secret": ""}))).await;
    assert_oauth_error(&result, "invalid_request", "Client authentication required");
    let code = code_with(&emulator, &http, &[]).await;
    let result = post_token(&emulator, &http, &exchange(code, json!({"client_secret": "wrong"}))).await;
    assert_oauth_error(&result, "invalid_client", "Invalid client secret");
    let code = code_with(&emulator, &http, &[]).await;
    let result = post_token(
        &emulator,
        &http,
        &exchange(
            code.clone(),
            json!({"client_secret": secret, "redirect_uri": "http://127.0.0.1:9/other"}),
        ),
    )
    .await;
    assert_oauth_error(&result, "invalid_grant", "Redirect URI mismatch");
    let result = post_token(&emulator, &http, &exchange(code, json!({"client_secret": secret}))).await;
    assert_oauth_error(&result, "invalid_grant", "Authorization code not found");
    let code = code_with(&emulator, &http, &[]).await;
    let result = post_token(
        &emulator,
        &http,
        &exchange(code, json!({"client_secret": secret, "client_id": "app_unknown"})),
    )
    .await;
    assert_oauth_error(&result, "invalid_client", "Client not found");

    // camelCase wins over snake_case.
    let code = code_with(&emulator, &http, &[]).await;
    let (status, body) = post_token(
        &emulator,
        &http,
        &exchange(code, json!({"client_secret": "wrong", "clientSecret": secret})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("refresh_token").is_none(), "no offline_access");
    let last = emulator.token_requests().pop().expect("recorded");
    assert!(last.camel_case);
    assert_eq!(last.status, 200);
    emulator.shutdown().await;
}

#[tokio::test]
async fn refresh_rotation_reuse_and_origin() {
    let emulator = start().await;
    let http = http();
    let first = login(&emulator, &http, FULL_SCOPE, "nonce-1").await;
    let rt1 = str_field(&first, "refresh_token").to_owned();

    // Server-to-server refresh: no secret, no Origin.
    let response = http
        .post(emulator.token_url())
        .json(&json!({"grant_type": "refresh_token", "refresh_token": rt1, "client_id": emulator.client_id()}))
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), StatusCode::OK);
    let raw = response.text().await.expect("text");
    assert_key_order(
        &raw,
        &[
            "access_token",
            "token_type",
            "expires_in",
            "refresh_token",
            "id_token",
            "access_token_jwt",
        ],
    );
    let second: Value = serde_json::from_str(&raw).expect("JSON");
    assert!(second.get("scope").is_none());
    assert!(second.get("user").is_none());
    let rt2 = str_field(&second, "refresh_token").to_owned();
    assert_ne!(rt1, rt2);
    let (_, key) = decoding_key(&emulator, &http).await;
    let claims = jsonwebtoken::decode::<Value>(
        str_field(&second, "id_token"),
        &key,
        &validation(emulator.client_id(), &emulator.issuer()),
    )
    .expect("refresh id_token verifies")
    .claims;
    assert!(claims.get("nonce").is_none());
    assert_eq!(claims["auth_time"], claims["iat"]);
    assert_eq!(claims["email"], "ada@example.com");

    // With the secret (camelCase this time).
    let (status, third) = post_token(
        &emulator,
        &http,
        &json!({
            "grantType": "refresh_token",
            "refreshToken": rt2,
            "clientId": emulator.client_id(),
            "clientSecret": emulator.client_secret(),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{third}");
    let rt3 = str_field(&third, "refresh_token").to_owned();

    // Reusing a rotated token kills the family, newest token included.
    assert_eq!(emulator.refresh_families_revoked(), 0);
    let result = refresh(&emulator, &http, &rt1).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token revoked");
    assert_eq!(emulator.refresh_families_revoked(), 1);
    let result = refresh(&emulator, &http, &rt3).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token revoked");
    assert_eq!(emulator.refresh_families_revoked(), 1);

    // Unknown token; unknown client.
    let result = refresh(&emulator, &http, "rt_00000000000000000000000000000000").await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token not found");
    let result = post_token(
        &emulator,
        &http,
        &json!({"grant_type": "refresh_token", "refresh_token": rt3, "client_id": "app_other"}),
    )
    .await;
    assert_oauth_error(&result, "invalid_client", "Client not found");

    // A browser Origin needs the secret unless it is a redirect-URI origin.
    let fresh = login(&emulator, &http, FULL_SCOPE, "nonce-2").await;
    let rt = str_field(&fresh, "refresh_token").to_owned();
    let body = json!({"grant_type": "refresh_token", "refresh_token": rt, "client_id": emulator.client_id()});
    let response = http
        .post(emulator.token_url())
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let error: Value = response.json().await.expect("JSON");
    assert_eq!(
        error["error_description"],
        "Request origin is not allowed for this client"
    );
    let response = http
        .post(emulator.token_url())
        .header("origin", "http://127.0.0.1:9")
        .json(&body)
        .send()
        .await
        .expect("refresh");
    assert_eq!(response.status(), StatusCode::OK);
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refreshes_kill_the_family() {
    let emulator = start().await;
    let http = http();
    let tokens = login(&emulator, &http, FULL_SCOPE, "n").await;
    let rt = str_field(&tokens, "refresh_token").to_owned();

    let (a, b) = tokio::join!(refresh(&emulator, &http, &rt), refresh(&emulator, &http, &rt));
    let (winner, loser) = match (a.0, b.0) {
        (StatusCode::OK, StatusCode::BAD_REQUEST) => (a.1, b.1),
        (StatusCode::BAD_REQUEST, StatusCode::OK) => (b.1, a.1),
        other => panic!("expected exactly one winner, got {other:?}"),
    };
    assert_eq!(loser["error"], "invalid_grant");

    let description = str_field(&loser, "error_description");
    assert!(
        description == "Refresh token was already used" || description == "Refresh token revoked",
        "{description}"
    );
    assert_eq!(emulator.refresh_families_revoked(), 1);
    let result = refresh(&emulator, &http, str_field(&winner, "refresh_token")).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token revoked");
    emulator.shutdown().await;
}

#[tokio::test]
async fn expired_refresh_token() {
    let emulator = start_with(EmulatorConfig {
        refresh_token_ttl: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let http = http();
    let tokens = login(&emulator, &http, FULL_SCOPE, "n").await;
    let rt = str_field(&tokens, "refresh_token").to_owned();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let result = refresh(&emulator, &http, &rt).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token expired");
    assert_eq!(emulator.refresh_families_revoked(), 0);
    let result = refresh(&emulator, &http, &rt).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token revoked");
    assert_eq!(emulator.refresh_families_revoked(), 1);
    emulator.shutdown().await;
}

#[tokio::test]
async fn id_token_defects() {
    let emulator = start().await;
    let http = http();
    let (kid, key) = decoding_key(&emulator, &http).await;
    let client_id = emulator.client_id().to_owned();
    let issuer = emulator.issuer();
    let nonce = "the-nonce";
    // Signature valid against the JWKS key, claims unchecked.
    let signature_ok = |token: &str| {
        let mut only_sig = Validation::new(Algorithm::RS256);
        only_sig.validate_aud = false;
        only_sig.validate_exp = false;
        only_sig.required_spec_claims.clear();
        jsonwebtoken::decode::<Value>(token, &key, &only_sig).is_ok()
    };

    let defects = [
        IdTokenDefect::BadSignature,
        IdTokenDefect::AlgNone,
        IdTokenDefect::Hs256WithPublicKey,
        IdTokenDefect::WrongIssuer,
        IdTokenDefect::IssuerPrefix,
        IdTokenDefect::WrongAudience,
        IdTokenDefect::AudienceArrayWithoutAzp,
        IdTokenDefect::Expired,
        IdTokenDefect::IssuedInFuture,
        IdTokenDefect::WrongNonce,
        IdTokenDefect::MissingNonce,
        IdTokenDefect::MissingSub,
        IdTokenDefect::UnpublishedKid,
    ];
    for defect in defects {
        emulator.set_id_token_defect(Some(defect));
        let body = login(&emulator, &http, "openid profile email", nonce).await;
        let token = str_field(&body, "id_token");
        let header = segment(token, 0);
        let claims = segment(token, 1);
        let now = now_secs();
        let normal_header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let expect_valid_signature = !matches!(
            defect,
            IdTokenDefect::BadSignature
                | IdTokenDefect::AlgNone
                | IdTokenDefect::Hs256WithPublicKey
                | IdTokenDefect::UnpublishedKid
        );
        assert_eq!(signature_ok(token), expect_valid_signature, "{defect:?}");
        if expect_valid_signature || defect == IdTokenDefect::BadSignature {
            assert_eq!(header, normal_header, "{defect:?}");
        }
        // The access_token_jwt is never defective.
        let access = jsonwebtoken::decode::<Value>(
            str_field(&body, "access_token_jwt"),
            &key,
            &validation(&issuer, &issuer),
        );
        assert!(access.is_ok(), "{defect:?}");
        match defect {
            IdTokenDefect::BadSignature => assert_eq!(claims["nonce"], nonce),
            IdTokenDefect::AlgNone => {
                assert_eq!(header["alg"], "none");
                assert!(token.ends_with('.'), "empty signature");
            }
            IdTokenDefect::Hs256WithPublicKey => {
                assert_eq!(header["alg"], "HS256");
                assert_eq!(header["kid"], kid.as_str());
                let (input, signature) = token.rsplit_once('.').expect("three parts");
                let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, emulator.public_key_pem().as_bytes());
                let expected = hmac::sign(&hmac_key, input.as_bytes());
                assert_eq!(signature, URL_SAFE_NO_PAD.encode(expected.as_ref()));
            }
            IdTokenDefect::WrongIssuer => {
                assert_ne!(claims["iss"], issuer.as_str());
                assert!(!str_field(&claims, "iss").starts_with(&issuer));
            }
            IdTokenDefect::IssuerPrefix => assert_eq!(claims["iss"], format!("{issuer}evil")),
            IdTokenDefect::WrongAudience => {
                assert_eq!(claims["aud"], "other-client");
                assert_ne!(claims["azp"], client_id.as_str());
            }
            IdTokenDefect::AudienceArrayWithoutAzp => {
                assert_eq!(claims["aud"], json!([client_id, "other-client"]));
                assert!(claims.get("azp").is_none());
            }
            IdTokenDefect::Expired => {
                let exp = claims["exp"].as_i64().expect("exp");
                assert!(exp <= now - 590 && exp >= now - 610, "exp {exp} now {now}");
            }
            IdTokenDefect::IssuedInFuture => {
                let iat = claims["iat"].as_i64().expect("iat");
                assert!(iat >= now + 590, "iat {iat} now {now}");
                assert!(claims["exp"].as_i64().expect("exp") > iat);
            }
            IdTokenDefect::WrongNonce => {
                assert!(claims["nonce"].is_string());
                assert_ne!(claims["nonce"], nonce);
            }
            IdTokenDefect::MissingNonce => assert!(claims.get("nonce").is_none()),
            IdTokenDefect::MissingSub => assert!(claims.get("sub").is_none()),
            IdTokenDefect::UnpublishedKid => {
                assert_eq!(header["alg"], "RS256");
                let rogue_kid = str_field(&header, "kid");
                assert_ne!(rogue_kid, kid);
                let served = jwks(&emulator, &http).await;
                assert!(
                    served["keys"]
                        .as_array()
                        .expect("keys")
                        .iter()
                        .all(|k| k["kid"] != rogue_kid)
                );
            }
        }
        if !matches!(
            defect,
            IdTokenDefect::MissingSub
                | IdTokenDefect::WrongNonce
                | IdTokenDefect::MissingNonce
                | IdTokenDefect::BadSignature
        ) {
            assert_eq!(claims["sub"], emulator.users()[0].id.as_str(), "{defect:?}");
        }
    }

    // Defects apply to refresh-grant id_tokens too.
    emulator.set_id_token_defect(Some(IdTokenDefect::WrongIssuer));
    let body = login(&emulator, &http, FULL_SCOPE, nonce).await;
    let (_, refreshed) = refresh(&emulator, &http, str_field(&body, "refresh_token")).await;
    assert_eq!(
        segment(str_field(&refreshed, "id_token"), 1)["iss"],
        "https://evil.example"
    );

    // And switching back restores correct tokens.
    emulator.set_id_token_defect(None);
    let body = login(&emulator, &http, "openid", nonce).await;
    jsonwebtoken::decode::<Value>(str_field(&body, "id_token"), &key, &validation(&client_id, &issuer))
        .expect("valid again");
    emulator.shutdown().await;
}

#[tokio::test]
async fn signing_key_rotation() {
    let emulator = start().await;
    let http = http();
    let before = login(&emulator, &http, "openid profile", "n").await;
    let (old_kid, _) = decoding_key(&emulator, &http).await;
    emulator.rotate_signing_key();
    let (new_kid, new_key) = decoding_key(&emulator, &http).await;
    assert_ne!(old_kid, new_kid);
    assert_eq!(emulator.current_kid(), new_kid);
    assert_eq!(jwks(&emulator, &http).await["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(emulator.jwks_fetches(), 3);

    let after = login(&emulator, &http, "openid profile", "n").await;
    let token = str_field(&after, "id_token");
    assert_eq!(segment(token, 0)["kid"], new_kid.as_str());
    jsonwebtoken::decode::<Value>(token, &new_key, &validation(emulator.client_id(), &emulator.issuer()))
        .expect("new token verifies with the new key");
    assert!(
        jsonwebtoken::decode::<Value>(
            str_field(&before, "id_token"),
            &new_key,
            &validation(emulator.client_id(), &emulator.issuer()),
        )
        .is_err()
    );
    // Userinfo no longer accepts a JWT signed by the old key.
    let response = http
        .get(emulator.userinfo_url())
        .bearer_auth(str_field(&before, "access_token_jwt"))
        .send()
        .await
        .expect("userinfo");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    emulator.shutdown().await;
}

#[tokio::test]
async fn rate_limit_per_client() {
    let emulator = start_with(EmulatorConfig {
        token_rate_limit_per_minute: 3,
        ..EmulatorConfig::default()
    })
    .await;
    let http = http();
    for _ in 0..3 {
        let result = refresh(&emulator, &http, "rt_unknown").await;
        assert_eq!(result.0, StatusCode::BAD_REQUEST);
    }
    let response = http
        .post(emulator.token_url())
        .json(&json!({"grant_type": "refresh_token", "refresh_token": "rt_unknown", "client_id": emulator.client_id()}))
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = response.headers();
    let retry_after: u64 = headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after));
    assert_eq!(headers["x-ratelimit-limit"], "3");
    let reset: i64 = headers["x-ratelimit-reset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("epoch seconds");
    assert!((reset - now_secs() - 60).abs() <= 2);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, json!({"error": "Too many attempts. Try again shortly."}));
    // Another client_id has its own window.
    let result = post_token(
        &emulator,
        &http,
        &json!({"grant_type": "refresh_token", "refresh_token": "rt_x", "client_id": "app_other"}),
    )
    .await;
    assert_oauth_error(&result, "invalid_client", "Client not found");
    let records = emulator.token_requests();
    assert_eq!(records[3].status, 429);
    emulator.shutdown().await;
}

#[tokio::test]
async fn hostile_token_endpoint() {
    let emulator = start().await;
    let http = http();
    let body = json!({"grant_type": "refresh_token", "refresh_token": "rt_x", "client_id": emulator.client_id()});

    emulator.set_token_failure(Some(TokenFailure::Status(503)));
    let response = http
        .post(emulator.token_url())
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let value: Value = response.json().await.expect("JSON");
    assert_eq!(
        value,
        json!({"error": "Rate limiting temporarily unavailable. Try again shortly."})
    );

    emulator.set_token_failure(Some(TokenFailure::Status(500)));
    let (status, value) = post_token(&emulator, &http, &body).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(value, json!({"error": "Internal Server Error"}));

    emulator.set_token_failure(Some(TokenFailure::RateLimited { retry_after_secs: 7 }));
    let response = http
        .post(emulator.token_url())
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.headers()["x-ratelimit-limit"], "180");

    emulator.set_token_failure(Some(TokenFailure::MalformedBody));
    let response = http
        .post(emulator.token_url())
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    assert!(serde_json::from_str::<Value>(&text).is_err());

    emulator.set_token_failure(Some(TokenFailure::Delay(Duration::from_millis(200))));
    let started = Instant::now();
    let result = post_token(&emulator, &http, &body).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_oauth_error(&result, "invalid_grant", "Refresh token not found");

    emulator.set_token_failure(None);
    let result = post_token(&emulator, &http, &body).await;
    assert_oauth_error(&result, "invalid_grant", "Refresh token not found");
    let statuses: Vec<u16> = emulator.token_requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 500, 429, 200, 400, 400]);
    emulator.shutdown().await;
}

#[tokio::test]
async fn userinfo_accepts_access_tokens_only() {
    let emulator = start().await;
    let http = http();
    let ada = emulator.users()[0].clone();
    let tokens = login(&emulator, &http, "openid profile email user_id", "n").await;
    assert!(tokens["user_id"].is_string());
    let expected = json!({
        "sub": ada.id,
        "name": "Ada Lovelace",
        "preferred_username": "ada",
        "picture": null,
        "email": "ada@example.com",
        "user_id": tokens["user_id"],
        "iss": emulator.issuer(),
    });
    for token in ["access_token", "access_token_jwt"] {
        let response = http
            .get(emulator.userinfo_url())
            .bearer_auth(str_field(&tokens, token))
            .send()
            .await
            .expect("userinfo");
        assert_eq!(response.status(), StatusCode::OK, "{token}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let raw = response.text().await.expect("text");
        assert_key_order(
            &raw,
            &[
                "sub",
                "name",
                "preferred_username",
                "picture",
                "email",
                "user_id",
                "iss",
            ],
        );
        assert!(raw.ends_with(&format!("\"iss\":\"{}\"}}", emulator.issuer())));
        assert_eq!(serde_json::from_str::<Value>(&raw).expect("JSON"), expected);
    }

    let cases: [(Option<String>, u16, &str); 5] = [
        (
            Some(format!("Bearer {}", str_field(&tokens, "id_token"))),
            401,
            "invalid_token",
        ),
        (
            Some(format!("bearer {}", str_field(&tokens, "access_token"))),
            401,
            "unauthorized",
        ),
        (None, 401, "unauthorized"),
        (Some("Bearer not-a-token".to_owned()), 401, "invalid_token"),
        (Some("Bearer a.b.c".to_owned()), 400, "Invalid JSON body"),
    ];
    for (authorization, status, error) in cases {
        let mut request = http.get(emulator.userinfo_url());
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.expect("userinfo");
        assert_eq!(response.status().as_u16(), status, "{error}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body, json!({ "error": error }));
    }
    emulator.shutdown().await;
}

/// Extracts each form's `name`/`value` pairs from the sign-in page.
fn forms(html: &str) -> Vec<Vec<(String, String)>> {
    fn attribute(tag: &str, name: &str) -> Option<String> {
        let start = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = start + tag[start..].find('"')?;
        Some(
            tag[start..end]
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        )
    }
    html.split("<form")
        .skip(1)
        .map(|form| {
            let form = form.split("</form>").next().unwrap_or_default();
            form.split("<input")
                .skip(1)
                .filter_map(|input| {
                    let tag = input.split('>').next()?;
                    Some((attribute(tag, "name")?, attribute(tag, "value")?))
                })
                .collect()
        })
        .collect()
}

async fn submit(emulator: &Emulator, http: &reqwest::Client, fields: &[(String, String)]) -> reqwest::Response {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    http.post(format!("{}/signin/decide", emulator.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("decide")
}

#[tokio::test]
async fn signin_page_and_forms() {
    let mut users = EmulatedUser::defaults();
    users.push(EmulatedUser {
        id: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d".to_owned(),
        display_name: "No <Email> Person".to_owned(),
        handle: "noemail".to_owned(),
        email: None,
        avatar_url: None,
    });
    let emulator = start_with(EmulatorConfig {
        users,
        ..EmulatorConfig::default()
    })
    .await;
    let registered = "http://localhost:9/cb?keep=1&code=old&code=dup";
    emulator.set_redirect_uris(vec![registered.to_owned()]);
    let http = http();
    let state = "<script>alert(\"x\")</script>&'";
    let params = [
        ("client_id", emulator.client_id()),
        ("redirect_uri", "HTTP://LOCALHOST:9/cb?keep=1&code=old&code=dup"),
        ("state", state),
        ("nonce", "n1"),
    ];
    let response = http.get(signin_url(&emulator, &params)).send().await.expect("signin");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let html = response.text().await.expect("html");
    assert!(html.contains("Ave emulator (local demo \u{2014} not the real Ave)"));
    assert!(html.contains(emulator.client_id()));
    assert!(html.contains("Sign in as Ada Lovelace"));
    assert!(html.contains("Sign in as Grace Hopper"));
    assert!(html.contains("Sign in as No &lt;Email&gt; Person"));
    assert!(html.contains("Deny"));
    assert!(!html.contains("<script>"));
    assert!(html.contains("<li><code>openid</code></li>"));

    let page_forms = forms(&html);
    assert_eq!(page_forms.len(), 4);
    let names: Vec<&str> = page_forms[0].iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "user_id",
            "decision"
        ]
    );
    let value = |form: &[(String, String)], name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .expect("field")
    };
    assert_eq!(value(&page_forms[0], "state"), state);
    assert_eq!(value(&page_forms[0], "scope"), "openid profile email");
    assert_eq!(value(&page_forms[0], "decision"), "approve");
    assert_eq!(value(&page_forms[3], "decision"), "deny");

    // Approve as Ada: code replaces the first `code`, duplicates go, state set.
    let response = submit(&emulator, &http, &page_forms[0]).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = url::Url::parse(response.headers()["location"].to_str().expect("ascii")).expect("url");
    let pairs: Vec<(String, String)> = location.query_pairs().into_owned().collect();
    assert_eq!(pairs.len(), 3);
    assert_eq!(pairs[0], ("keep".to_owned(), "1".to_owned()));
    assert_eq!(pairs[1].0, "code");
    assert_ne!(pairs[1].1, "old");
    assert_eq!(pairs[2], ("state".to_owned(), state.to_owned()));
    let (status, body) = post_token(
        &emulator,
        &http,
        &json!({
            "grant_type": "authorization_code",
            "code": pairs[1].1,
            "redirect_uri": "http://LOCALHOST:9/cb?keep=1&code=old&code=dup",
            "client_id": emulator.client_id(),
            "client_secret": emulator.client_secret(),
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["handle"], "ada");

    // The user without an email cannot grant the email scope.
    let response = submit(&emulator, &http, &page_forms[2]).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.headers().get("location").is_none());

    // Deny.
    let response = submit(&emulator, &http, &page_forms[3]).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = url::Url::parse(response.headers()["location"].to_str().expect("ascii")).expect("url");
    assert_eq!(query_param(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_param(&location, "state").as_deref(), Some(state));
    assert!(query_param(&location, "error_description").is_none());

    // Invalid requests show an error page and never redirect.
    let bad: [(Vec<(&str, &str)>, &str); 4] = [
        (vec![("redirect_uri", registered)], "Missing client_id parameter"),
        (
            vec![("client_id", "app_nope"), ("redirect_uri", registered)],
            "Invalid client_id",
        ),
        (
            vec![
                ("client_id", emulator.client_id()),
                ("redirect_uri", "http://evil.example/cb"),
            ],
            "Invalid redirect_uri",
        ),
        (
            vec![
                ("client_id", emulator.client_id()),
                ("redirect_uri", registered),
                ("scope", "openid admin"),
            ],
            "Invalid scopes: admin",
        ),
    ];
    for (params, message) in bad {
        let response = http.get(signin_url(&emulator, &params)).send().await.expect("signin");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{message}");
        assert!(response.headers().get("location").is_none());
        assert!(response.text().await.expect("html").contains(message));
    }

    // Auto-approve, unless prompt=consent forces the screen.
    emulator.set_auto_approve(Some(emulator.users()[1].id.clone()));
    let base = [("client_id", emulator.client_id()), ("redirect_uri", registered)];
    let response = http.get(signin_url(&emulator, &base)).send().await.expect("signin");
    assert_eq!(response.status(), StatusCode::FOUND);
    let mut forced = base.to_vec();
    forced.push(("prompt", "consent"));
    let response = http.get(signin_url(&emulator, &forced)).send().await.expect("signin");
    assert_eq!(response.status(), StatusCode::OK);
    emulator.shutdown().await;
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let emulator = start().await;
    let url = emulator.discovery_url();
    let clone = emulator.clone();
    drop(emulator);
    // A clone keeps it alive.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    assert!(client.get(&url).send().await.is_ok());
    drop(clone);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(client.get(&url).send().await.is_err());
}

/// Rotating the client secret (Ave's `POST /api/apps/:appId/rotate-secret`) has no overlap: the old secret is refused
/// from that moment, the new one works, and no refresh token is revoked.
#[tokio::test]
async fn client_secret_rotation_has_no_overlap_and_revokes_nothing() {
    let emulator = start().await;
    let http = http();
    let tokens = login(&emulator, &http, "openid offline_access", "n-rotate").await;
    let old = emulator.client_secret();
    let new = "rotated-secret-0123456789abcdef".to_owned();
    emulator.rotate_client_secret(new.clone());
    assert_eq!(emulator.client_secret(), new);
    let refresh_with = |secret: &str| {
        json!({
            "grant_type": "refresh_token",
            "refresh_token": str_field(&tokens, "refresh_token"),
            "client_id": emulator.client_id(),
            "client_secret": secret,
        })
    };
    let result = post_token(&emulator, &http, &refresh_with(&old)).await;
    assert_oauth_error(&result, "invalid_client", "Invalid client secret");
    let (status, body) = post_token(&emulator, &http, &refresh_with(&new)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the refresh token survived the rotation: {body}"
    );
    emulator.shutdown().await;
}
