//! The loader's tests: every setting's sources, defaults and error lines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::http::security::{Docs, SecuritySettings, TokenEndpoint};
use avemint_base::web_url::DEFAULT_ISSUER;
use avemint_core::ave::settings::{ClientOptions, DEFAULT_SCOPES};
use avemint_core::mint::hook::FailurePolicy;
use avemint_core::mint::keys::{Algorithm, KeyPolicy};
use avemint_core::mint::profiles::DEFAULT_MAX_TOKEN_BYTES;
use avemint_core::session::DatabaseUrl;
use avemint_core::traffic::rate_limit::RateLimit;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn minimal() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AVE_CLIENT_ID", "app_1"),
        ("AVE_CLIENT_SECRET", "s3cret-value"),
        ("AVEMINT_PUBLIC_URL", "https://app.example.com/"),
        ("AVEMINT_SESSION_KEYS", KEY),
    ]
}

#[test]
fn minimal_env_gives_documented_defaults() {
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert_eq!(s.ave.issuer.as_str(), "https://aveid.net");
    assert_eq!(s.ave.issuer.as_str(), DEFAULT_ISSUER);
    assert_eq!(s.public_url.as_str(), "https://app.example.com");
    assert_eq!(s.public_url.redirect_uri(), "https://app.example.com/auth/callback");
    assert_eq!(s.listen, "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"));
    let token = s.token.default_profile();
    assert_eq!(token.ttl, Duration::from_secs(300));
    assert_eq!(token.audience, "https://app.example.com");
    assert_eq!(token.name, "default");
    assert_eq!(s.token.profiles().len(), 1);
    assert_eq!(s.ave.scopes, DEFAULT_SCOPES);
    assert_eq!(s.store.database_url, DatabaseUrl::Sqlite("sqlite://avemint.db".into()));
    assert_eq!(s.keys.dir, PathBuf::from("keys"));
    assert_eq!(s.keys.policy, KeyPolicy::default());
    assert_eq!(s.keys.policy.algorithm, Algorithm::Es256);
    assert_eq!(s.keys.policy.rotation, None);
}

#[test]
fn store_pool_and_refresh_timeout_parse_and_report_problems() {
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert_eq!(s.store.max_connections, 16);
    assert_eq!(s.ave.options.refresh_timeout, ClientOptions::default().refresh_timeout);
    let mut e = minimal();
    e.push(("AVEMINT_DATABASE_MAX_CONNECTIONS", "40"));
    e.push(("AVEMINT_AVE_REFRESH_TIMEOUT", "5"));
    let s = Settings::load(None, &env(&e)).expect("valid");
    assert_eq!(s.store.max_connections, 40);
    assert_eq!(s.ave.options.refresh_timeout, Duration::from_secs(5));
    let mut e = minimal();
    e.push(("AVEMINT_DATABASE_MAX_CONNECTIONS", "0"));
    e.push(("AVEMINT_AVE_REFRESH_TIMEOUT", "never"));
    let errors = Settings::load(None, &env(&e)).expect_err("invalid").0;
    assert!(
        errors.iter().any(|m| m.starts_with("AVEMINT_DATABASE_MAX_CONNECTIONS")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|m| m.starts_with("AVEMINT_AVE_REFRESH_TIMEOUT")),
        "{errors:?}"
    );
}

#[test]
fn key_settings_parse_and_report_problems() {
    let mut e = minimal();
    e.push(("AVEMINT_KEY_ALGORITHM", "EdDSA"));
    e.push(("AVEMINT_KEY_ROTATION", "30d"));
    let s = Settings::load(None, &env(&e)).expect("valid");
    assert_eq!(s.keys.policy.algorithm, Algorithm::EdDsa);
    assert_eq!(s.keys.policy.rotation, Some(Duration::from_secs(30 * 86_400)));
    let k = load_keys(
        None,
        &env(&[("AVEMINT_KEY_ALGORITHM", "rs256"), ("AVEMINT_KEYS_DIR", "/k")]),
    )
    .expect("keys settings need no client settings");
    assert_eq!((k.dir, k.policy.algorithm), (PathBuf::from("/k"), Algorithm::Rs256));
    let err = load_keys(
        None,
        &env(&[("AVEMINT_KEY_ALGORITHM", "hs256"), ("AVEMINT_KEY_ROTATION", "5m")]),
    )
    .expect_err("invalid");
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0[0].contains("AVEMINT_KEY_ALGORITHM") && err.0[1].contains("AVEMINT_KEY_ROTATION"));
}

#[test]
fn every_problem_is_reported_once_and_secrets_are_not_echoed() {
    let e = Settings::load(
        None,
        &env(&[
            ("AVE_CLIENT_SECRET", "   "),
            ("AVEMINT_PUBLIC_URL", "http://example.com"),
            ("AVEMINT_SESSION_KEYS", "c2hvcnQtc2VjcmV0LWtleQ=="),
            ("AVEMINT_TOKEN_TTL", "zero"),
            ("AVEMINT_TOKEN_CLAIMS", r#"{"sub":"x"}"#),
            ("AVE_ISSUER", "ftp://aveid.net"),
        ]),
    )
    .expect_err("invalid");
    let text = e.to_string();
    assert_eq!(e.0.len(), 7, "{text}");
    for needle in [
        "AVE_CLIENT_ID",
        "AVE_CLIENT_SECRET",
        "AVEMINT_PUBLIC_URL",
        "AVEMINT_SESSION_KEYS",
        "AVEMINT_TOKEN_TTL",
        "AVEMINT_TOKEN_CLAIMS",
        "AVE_ISSUER",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    assert!(!text.contains("c2hvcnQtc2VjcmV0LWtleQ"));
}

#[test]
fn environment_wins_over_file_and_file_secrets_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, "from-file\n").expect("write");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(
        &cfg,
        format!(
            "client_id = \"file-id\"\npublic_url = \"http://127.0.0.1:9000\"\nsession_keys = [\"{KEY}\"]\ntoken_ttl = 60\n[token_claims]\nplan = \"pro\"\n"
        ),
    )
    .expect("write");
    let e = env(&[
        ("AVE_CLIENT_ID", "env-id"),
        ("AVE_CLIENT_SECRET_FILE", secret_path.to_str().expect("utf8")),
    ]);
    let s = Settings::load(Some(&cfg), &e).expect("valid");
    assert_eq!(s.ave.client_id, "env-id");
    assert_eq!(s.ave.client_secret.expose(), "from-file");
    assert_eq!(s.token.default_profile().ttl, Duration::from_secs(60));
    assert!(!s.token.default_profile().claims.is_empty());
}

#[test]
fn every_file_pair_refuses_both_and_the_database_url_reads_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url_path = dir.path().join("db");
    std::fs::write(
        &url_path,
        "postgres://avemint:hunter2@db.internal:6543/sessions?sslmode=require\n",
    )
    .expect("write");
    let url_path = url_path.to_str().expect("utf8");
    let mut pairs = minimal();
    pairs.push(("AVEMINT_DATABASE_URL_FILE", url_path));
    let s = Settings::load(None, &env(&pairs)).expect("valid");
    assert_eq!(s.store.database_url.describe(), "postgres://db.internal:6543/sessions");
    assert!(
        s.defaults.iter().all(|d| !d.contains("DATABASE_URL")),
        "{:?}",
        s.defaults
    );
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert!(
        s.defaults
            .contains(&"no AVEMINT_DATABASE_URL: using sqlite://avemint.db in the working directory".to_owned()),
        "{:?}",
        s.defaults
    );
    // Both of one pair, in the environment: one line naming both, for each pair.
    for (name, value) in [
        ("AVE_CLIENT_SECRET", "x"),
        ("AVEMINT_SESSION_KEYS", KEY),
        ("AVEMINT_DATABASE_URL", "sqlite://a.db"),
    ] {
        let file_name = format!("{name}_FILE");
        let mut pairs = minimal();
        pairs.retain(|(k, _)| *k != name);
        pairs.push((name, value));
        pairs.push((&file_name, url_path));
        let e = Settings::load(None, &env(&pairs)).expect_err("both");
        assert_eq!(
            e.0,
            vec![format!("{name} and {name}_FILE are both set; set only one of them")]
        );
    }
    // Both of one pair in the file.
    let e = load_file(
        &format!("database_url = \"sqlite://a.db\"\ndatabase_url_file = \"{url_path}\"\n"),
        &[],
    )
    .expect_err("both");
    assert_eq!(
        e.0,
        vec!["config file `database_url` and config file `database_url_file` are both set; set only one of them"]
    );
    // The environment's pair wins over the file's.
    let s = load_file(
        "database_url = \"sqlite://file.db\"\n",
        &[("AVEMINT_DATABASE_URL_FILE", url_path)],
    )
    .expect("env wins");
    assert!(matches!(s.store.database_url, DatabaseUrl::Postgres(_)));
    // Unreadable: named, and the password never appears anywhere.
    let mut pairs = minimal();
    pairs.push(("AVEMINT_DATABASE_URL_FILE", "/nonexistent/avemint-db-url"));
    let e = Settings::load(None, &env(&pairs)).expect_err("unreadable");
    assert_eq!(
        e.0,
        vec!["AVEMINT_DATABASE_URL_FILE: cannot read /nonexistent/avemint-db-url: entity not found"]
    );
}

#[test]
fn unknown_file_keys_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, "clientid = \"typo\"\n").expect("write");
    let e = Settings::load(Some(&cfg), &env(&[])).expect_err("invalid");
    assert!(e.to_string().contains("clientid"), "{e}");
}

#[test]
fn file_keys_of_the_wrong_type_and_unknown_keys_are_reported_with_the_rest() {
    let e = load_file(
        "token_ttl = \"60\"\nsession_keys = \"not-a-list\"\nclientid = \"typo\"\n",
        &[("AVEMINT_DOCS", "maybe")],
    )
    .expect_err("invalid");
    assert_eq!(e.0.len(), 4, "{e}");
    assert!(
        e.0.contains(&"config file `token_ttl`: must be a whole number".to_owned()),
        "{e}"
    );
    assert!(
        e.0.contains(&"config file `session_keys`: must be an array of strings".to_owned()),
        "{e}"
    );
    assert!(
        e.to_string().contains("`clientid`") && e.to_string().contains("AVEMINT_DOCS"),
        "{e}"
    );
}

#[test]
fn the_keys_commands_accept_every_serve_key_and_refuse_unknown_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, format!("client_id = \"x\"\nkeys_dir = \"/k\"\n{TWO}")).expect("write");
    let k = load_keys(Some(&cfg), &env(&[])).expect("serve keys are known");
    assert_eq!(k.dir, PathBuf::from("/k"));
    std::fs::write(&cfg, "keys_dir = \"/k\"\nkey_rotaton = \"30d\"\n").expect("write");
    let e = load_keys(Some(&cfg), &env(&[])).expect_err("typo");
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].contains("`key_rotaton`"), "{e}");
}

fn load_file(toml: &str, extra_env: &[(&str, &str)]) -> Result<Settings, ConfigErrors> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, toml).expect("write");
    let mut pairs = minimal();
    pairs.extend_from_slice(extra_env);
    Settings::load(Some(&cfg), &env(&pairs))
}

const TWO: &str = "[[profiles]]\nname = \"web\"\naudience = \"https://web\"\nttl = 600\ndefault = true\n[profiles.claims]\nplan = \"pro\"\n[[profiles]]\nname = \"orders\"\naudience = \"orders-api\"\n[profiles.hook]\nurl = \"https://hooks.example.com/roles\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";

#[test]
fn profiles_load_with_defaults_and_the_marked_one_is_the_default() {
    let s = load_file(TWO, &[]).expect("valid");
    let t = &s.token;
    assert_eq!(t.profiles().len(), 2);
    let d = t.default_profile();
    assert_eq!((d.audience.as_str(), d.ttl), ("https://web", Duration::from_secs(600)));
    assert!(!d.claims.is_empty());
    assert_eq!(t.max_token_bytes(), DEFAULT_MAX_TOKEN_BYTES);
    let orders = &t.profiles()[1];
    assert!(!orders.default);
    assert_eq!(orders.ttl, Duration::from_secs(300));
    let hook = orders.hook.as_ref().expect("hook");
    assert_eq!(hook.url.as_str(), "https://hooks.example.com/roles");
    assert_eq!(hook.timeout, Duration::from_millis(2000));
    assert_eq!(hook.cache_ttl, Duration::from_secs(60));
    assert_eq!(hook.on_failure, FailurePolicy::Deny);
    // A single profile is the default without saying so.
    let one = load_file("[[profiles]]\nname = \"a\"\naudience = \"x\"\n", &[]).expect("valid");
    assert!(one.token.profiles()[0].default);
    assert_eq!(one.token.default_profile().audience, "x");
}

#[test]
fn the_environment_overrides_the_default_profile() {
    let s = load_file(
        TWO,
        &[
            ("AVEMINT_TOKEN_TTL", "30"),
            ("AVEMINT_TOKEN_AUDIENCE", "https://env"),
            ("AVEMINT_TOKEN_CLAIMS", "{}"),
            ("AVEMINT_TOKEN_MAX_BYTES", "2048"),
        ],
    )
    .expect("valid");
    let web = &s.token.profiles()[0];
    assert_eq!(
        (web.audience.as_str(), web.ttl),
        ("https://env", Duration::from_secs(30))
    );
    assert!(web.claims.is_empty());
    assert_eq!(s.token.profiles()[1].audience, "orders-api", "other profiles unchanged");
    assert_eq!(s.token.default_profile().audience, "https://env");
    assert_eq!(s.token.max_token_bytes(), 2048);
    // An override that collides with another profile's audience is refused.
    let e = load_file(TWO, &[("AVEMINT_TOKEN_AUDIENCE", "orders-api")]).expect_err("duplicate");
    assert!(e.to_string().contains("already the audience"), "{e}");
}

#[test]
fn the_ops_listener_is_optional_and_must_differ_from_the_public_one() {
    assert_eq!(
        Settings::load(None, &env(&minimal())).expect("default").ops_listen,
        None
    );
    let mut e = minimal();
    e.push(("AVEMINT_OPS_LISTEN", "127.0.0.1:9091"));
    let s = Settings::load(None, &env(&e)).expect("set");
    assert_eq!(s.ops_listen, Some("127.0.0.1:9091".parse().expect("addr")));
    let file = load_file("ops_listen = \"0.0.0.0:9100\"\n", &[]).expect("file key");
    assert_eq!(file.ops_listen, Some("0.0.0.0:9100".parse().expect("addr")));
    for bad in ["9091", "127.0.0.1:8080"] {
        let mut e = minimal();
        e.push(("AVEMINT_OPS_LISTEN", bad));
        let err = Settings::load(None, &env(&e)).expect_err(bad).to_string();
        assert!(err.contains("AVEMINT_OPS_LISTEN"), "{err}");
    }
}

#[test]
fn hardening_settings_parse_with_documented_defaults() {
    let s = Settings::load(None, &env(&minimal())).expect("defaults");
    assert_eq!(s.session.max_sessions_per_user, 50);
    assert_eq!(s.security.docs, Docs::On);
    assert_eq!(s.security.connection_timeouts.header_read, Duration::from_secs(10));
    assert_eq!(s.security.connection_timeouts.keep_alive, Duration::from_secs(75));
    let mut e = minimal();
    e.extend([
        ("AVEMINT_MAX_SESSIONS_PER_USER", "3"),
        ("AVEMINT_DOCS", "off"),
        ("AVEMINT_HEADER_READ_TIMEOUT", "5"),
        ("AVEMINT_KEEP_ALIVE_TIMEOUT", "30"),
    ]);
    let s = Settings::load(None, &env(&e)).expect("set");
    assert_eq!(s.session.max_sessions_per_user, 3);
    assert_eq!(s.security.docs, Docs::Off);
    assert_eq!(s.security.connection_timeouts.header_read, Duration::from_secs(5));
    assert_eq!(s.security.connection_timeouts.keep_alive, Duration::from_secs(30));
    let mut bad = minimal();
    bad.extend([
        ("AVEMINT_MAX_SESSIONS_PER_USER", "-1"),
        ("AVEMINT_DOCS", "maybe"),
        ("AVEMINT_HEADER_READ_TIMEOUT", "0"),
        ("AVEMINT_KEEP_ALIVE_TIMEOUT", "forever"),
    ]);
    let err = Settings::load(None, &env(&bad)).expect_err("refused");
    assert_eq!(err.0.len(), 4, "{err}");
    let file = load_file(
        "max_sessions_per_user = 0\ndocs = \"off\"\nheader_read_timeout = 2\nkeep_alive_timeout = 9\n",
        &[],
    )
    .expect("file keys");
    assert_eq!(file.session.max_sessions_per_user, 0);
    assert_eq!(file.security.docs, Docs::Off);
}

#[test]
fn bad_profiles_and_hooks_are_refused_one_line_each() {
    let hook = |extra: &str| {
        format!(
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"https://h.example/x\"\n{extra}\n"
        )
    };
    for (toml, needle) in [
        (format!("token_ttl = 60\n{TWO}"), "`token_ttl`: cannot be combined"),
        (format!("token_audience = \"y\"\n{TWO}"), "`token_audience`: cannot be combined"),
        ("profiles = []\n".to_owned(), "the list is empty"),
        ("[[profiles]]\nname = \"has space\"\naudience = \"x\"\n".to_owned(), "`name`"),
        ("[[profiles]]\nname = \"a\"\naudience = \" \"\n".to_owned(), "`audience`"),
        ("[[profiles]]\nname = \"a\"\naudience = \"x\"\nttl = 0\n".to_owned(), "`ttl`"),
        ("[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.claims]\naud = \"y\"\n".to_owned(), "`aud`"),
        (hook(""), "exactly one of `secret` and `secret_file`"),
        (hook("secret = \"short\""), "at least 32"),
        (hook("secret = \"0123456789abcdef0123456789abcdef\"\nsecret_file = \"/x\""), "`secret` and config file profile `a`: `hook`: `secret_file` are both set"),
        (hook("secret_file = \"/nonexistent/avemint-secret\""), "cannot read"),
        (hook("secret = \"0123456789abcdef0123456789abcdef\"\non_failure = \"retry\""), "`on_failure`"),
        (hook("secret = \"0123456789abcdef0123456789abcdef\"\ntimeout_ms = 0"), "`timeout_ms`"),
        (hook("secret = \"0123456789abcdef0123456789abcdef\"\ncache_ttl = 100000"), "`cache_ttl`"),
        (
            "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"http://hooks.example.com\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n".to_owned(),
            "https",
        ),
        ("max_token_bytes = 100\n".to_owned(), "max_token_bytes"),
    ] {
        let e = load_file(&toml, &[]).expect_err(&toml);
        assert_eq!(e.0.len(), 1, "one line for {toml}: {e}");
        assert!(e.to_string().contains(needle), "{needle} in {e}");
        assert!(!e.to_string().contains("0123456789abcdef"), "no secret echoed: {e}");
    }
    // http is fine for loopback hooks.
    let ok = "[[profiles]]\nname = \"a\"\naudience = \"x\"\n[profiles.hook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    assert!(load_file(ok, &[]).is_ok());
}

#[test]
fn security_settings_are_parsed_and_checked() {
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert_eq!(s.security, SecuritySettings::default());
    assert_eq!(s.security.login_rate_limit, RateLimit(30));
    let mut pairs = minimal();
    pairs.push((
        "AVEMINT_ALLOWED_ORIGINS",
        "https://spa.example.com,http://localhost:5173",
    ));
    pairs.push(("AVEMINT_TRUSTED_PROXIES", "10.0.0.0/8, ::1"));
    pairs.push(("AVEMINT_LOGIN_RATE_LIMIT", "5"));
    let s = Settings::load(None, &env(&pairs)).expect("valid");
    assert!(s.security.allowed_origins.contains("http://localhost:5173"));
    assert!(s.security.trusted_proxies.contains("10.9.8.7".parse().expect("ip")));
    assert_eq!(s.security.login_rate_limit, RateLimit(5));
    let mut bad = minimal();
    bad.push(("AVEMINT_ALLOWED_ORIGINS", "*"));
    bad.push(("AVEMINT_TRUSTED_PROXIES", "proxy.example"));
    bad.push(("AVEMINT_LOGIN_RATE_LIMIT", "-1"));
    let e = Settings::load(None, &env(&bad)).expect_err("invalid");
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn websocket_limits_from_the_file_or_the_environment() {
    let s = Settings::load(None, &env(&minimal())).expect("defaults");
    assert_eq!((s.websockets.per_session, s.websockets.instance), (8, 1024));
    let s = load_file(
        "max_websockets_per_session = 2\nmax_websockets = 50\n",
        &[("AVEMINT_MAX_WEBSOCKETS", "70")],
    )
    .expect("valid");
    assert_eq!((s.websockets.per_session, s.websockets.instance), (2, 70));
    let e = load_file("", &[("AVEMINT_MAX_WEBSOCKETS_PER_SESSION", "0")]).expect_err("zero");
    assert!(e.0[0].starts_with("AVEMINT_MAX_WEBSOCKETS_PER_SESSION"), "{e}");
}

#[test]
fn routes_from_the_file_or_the_environment_with_every_problem_reported() {
    assert!(
        Settings::load(None, &env(&minimal()))
            .expect("valid")
            .routes
            .all()
            .is_empty()
    );
    let file = "[[routes]]\npath = \"/api/orders\"\nupstream = \"https://orders.internal:8443/v1\"\nmethods = [\"GET\", \"POST\"]\ntimeout_ms = 5000\nmax_request_bytes = 1024\nmax_message_bytes = 4096\nstrip_cookies = true\n";
    let s = load_file(file, &[]).expect("valid");
    let r = &s.routes.all()[0];
    assert_eq!(r.max_message_bytes, 4096);
    assert_eq!(
        (r.path.as_str(), r.upstream.as_str()),
        ("/api/orders", "https://orders.internal:8443/v1")
    );
    assert_eq!(
        (r.timeout, r.max_request_bytes, r.strip_cookies),
        (Duration::from_millis(5000), 1024, true)
    );
    assert_eq!(r.methods.as_ref().map(Vec::len), Some(2));
    let json = r#"[{"path": "/api/a", "upstream": "http://127.0.0.1:9000", "profile": "orders"}]"#;
    let s = load_file(TWO, &[("AVEMINT_ROUTES", json)]).expect("env");
    assert_eq!(s.routes.all()[0].profile.as_deref(), Some("orders"));
    let s = load_file(&format!("{file}{TWO}"), &[("AVEMINT_ROUTES", json)]).expect("the environment wins");
    assert_eq!(s.routes.all()[0].path, "/api/a");
    let bad = r#"[{"path": "/auth", "upstream": "http://orders.internal", "profile": "nope"}, {"path": "/x", "upstream": "https://h", "extra": 1}]"#;
    let e = load_file(TWO, &[("AVEMINT_ROUTES", bad)]).expect_err("invalid");
    assert_eq!(e.0.len(), 1, "a JSON shape error is one line: {e}");
    assert!(e.0[0].starts_with("AVEMINT_ROUTES: unknown field `extra`"), "{e}");
    let bad = r#"[{"path": "/auth", "upstream": "http://orders.internal", "profile": "nope"}]"#;
    let e = load_file(TWO, &[("AVEMINT_ROUTES", bad)]).expect_err("invalid");
    assert_eq!(e.0.len(), 3, "{e}");
    assert!(
        e.0.iter().all(|l| l.starts_with("AVEMINT_ROUTES: route `/auth`: ")),
        "{e}"
    );
    let e = load_file("[[routes]]\npath = \"/a\"\n", &[]).expect_err("no upstream");
    assert!(
        e.0[0].starts_with("config file `routes`: missing field `upstream`"),
        "{e}"
    );
}

#[test]
fn ave_metadata_ttl_from_env_or_file_with_a_default_of_five_minutes() {
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(300));
    let s = load_file("ave_metadata_ttl = 60\n", &[]).expect("file key");
    assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(60));
    let s = load_file("ave_metadata_ttl = 60\n", &[("AVEMINT_AVE_METADATA_TTL", "2")]).expect("env wins");
    assert_eq!(s.ave.options.metadata_ttl, Duration::from_secs(2));
    for bad in ["0", "86401", "5m", "-1"] {
        let mut pairs = minimal();
        pairs.push(("AVEMINT_AVE_METADATA_TTL", bad));
        let err = Settings::load(None, &env(&pairs)).expect_err(bad).to_string();
        assert_eq!(
            err, "AVEMINT_AVE_METADATA_TTL: must be a whole number of seconds from 1 to 86400",
            "{bad}"
        );
    }
}

#[test]
fn browser_and_the_token_endpoint_load_from_the_file_and_the_environment() {
    let browser = |s: &Settings| -> Vec<(String, Option<bool>)> {
        s.token.profiles().iter().map(|p| (p.name.clone(), p.browser)).collect()
    };
    // No route: every profile is mintable by page script; the endpoint is on.
    let s = load_file(TWO, &[]).expect("valid");
    assert_eq!(
        browser(&s),
        [("web".to_owned(), Some(true)), ("orders".to_owned(), Some(true))]
    );
    assert_eq!(s.security.token_endpoint, TokenEndpoint::On);
    // A route's profile is not, unless it says so; a route without `profile` attaches the default one.
    let route = |profile: &str| format!("[[routes]]\npath = \"/api/x\"\nupstream = \"https://x.internal\"\n{profile}");
    let s = load_file(&format!("{TWO}{}", route("profile = \"orders\"\n")), &[]).expect("valid");
    assert_eq!(
        browser(&s),
        [("web".to_owned(), Some(true)), ("orders".to_owned(), Some(false))]
    );
    let said = TWO.replace(
        "[[profiles]]\nname = \"orders\"",
        "[[profiles]]\nname = \"orders\"\nbrowser = true",
    );
    let s = load_file(&format!("{said}{}", route("profile = \"orders\"\n")), &[]).expect("valid");
    assert_eq!(browser(&s)[1], ("orders".to_owned(), Some(true)));
    let s = load_file(&format!("{TWO}{}", route("")), &[]).expect("valid");
    assert_eq!(
        browser(&s)[0],
        ("web".to_owned(), Some(false)),
        "the default profile is the route's"
    );
    // The environment: the default profile's `browser`, and the endpoint switch (the file takes a boolean).
    let s = load_file(&format!("{TWO}{}", route("")), &[("AVEMINT_TOKEN_BROWSER", "true")]).expect("valid");
    assert_eq!(browser(&s)[0], ("web".to_owned(), Some(true)));
    let s = load_file(&format!("token_endpoint = false\n{TWO}"), &[]).expect("valid");
    assert_eq!(s.security.token_endpoint, TokenEndpoint::Off);
    let s = load_file(TWO, &[("AVEMINT_TOKEN_ENDPOINT", "off")]).expect("valid");
    assert_eq!(s.security.token_endpoint, TokenEndpoint::Off);
    let s = Settings::load(
        None,
        &env(&[minimal(), vec![("AVEMINT_TOKEN_BROWSER", "false")]].concat()),
    )
    .expect("env only");
    assert_eq!(s.token.default_profile().browser, Some(false));
    // Bad values, and the flat key next to [[profiles]], are refused.
    let e = load_file(TWO, &[("AVEMINT_TOKEN_ENDPOINT", "maybe")]).expect_err("invalid");
    assert!(e.0[0].contains("AVEMINT_TOKEN_ENDPOINT"), "{e}");
    let e = load_file(&format!("token_browser = true\n{TWO}"), &[]).expect_err("invalid");
    assert!(e.0[0].contains("token_browser"), "{e}");
    let e = load_file(&format!("token_endpoint = 3\n{TWO}"), &[]).expect_err("invalid");
    assert!(e.0[0].contains("token_endpoint"), "{e}");
}

#[test]
fn token_service_settings_load_and_bad_ones_are_refused_one_line_each() {
    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    let toml = format!(
        "[exchange]\nave_client_ids = [\"app_a\", \"app_b\"]\n\
         [[profiles]]\nname = \"web\"\naudience = \"w\"\ndefault = true\n[profiles.exchange]\nsecret = \"{SECRET}\"\nmay_exchange_to = [\"orders\"]\n\
         [[profiles]]\nname = \"orders\"\naudience = \"o\"\nexchange_from_ave = true\n\
         [[profiles]]\nname = \"job\"\naudience = \"j\"\nservice = true\n[profiles.client]\nsecret = \"{SECRET}\"\n"
    );
    let s = load_file(&toml, &[]).expect("valid");
    assert_eq!(s.exchange.ave_client_ids, ["app_a", "app_b"]);
    let p = s.token.profiles();
    assert_eq!(
        p[0].grants.exchange.as_ref().expect("exchange").may_exchange_to,
        ["orders"]
    );
    assert!(p[1].grants.exchange_from_ave && !p[1].grants.service);
    assert!(p[2].grants.service && p[2].grants.client_secret.is_some());
    assert_eq!(
        p[2].browser,
        Some(false),
        "a service profile is never minted for a browser"
    );
    // The environment wins; empty is off.
    let s = load_file(&toml, &[("AVEMINT_EXCHANGE_AVE_CLIENT_IDS", "app_c, app_d")]).expect("valid");
    assert_eq!(s.exchange.ave_client_ids, ["app_c", "app_d"]);
    assert!(load_file(TWO, &[]).expect("valid").exchange.ave_client_ids.is_empty());

    let one = |extra: &str| format!("[[profiles]]\nname = \"a\"\naudience = \"x\"\n{extra}\n");
    let two = |extra: &str| {
        format!(
            "[[profiles]]\nname = \"b\"\naudience = \"y\"\ndefault = true\n{}",
            one(extra)
        )
    };
    for (toml, needle) in [
        (one("service = true"), "needs `[profiles.client]`"),
        (
            one(&format!("[profiles.client]\nsecret = \"{SECRET}\"")),
            "for service profiles only",
        ),
        (
            one(&format!(
                "service = true\nbrowser = true\n[profiles.client]\nsecret = \"{SECRET}\""
            )),
            "never minted for a browser",
        ),
        (
            one(&format!(
                "service = true\nexchange_from_ave = true\n[profiles.client]\nsecret = \"{SECRET}\""
            )),
            "`exchange_from_ave = true`",
        ),
        (
            one(&format!(
                "[profiles.exchange]\nsecret = \"{SECRET}\"\nmay_exchange_to = [\"nope\"]"
            )),
            "names `nope`",
        ),
        (
            one(&format!("[profiles.exchange]\nsecret = \"{SECRET}\"")),
            "needs `may_exchange_to`",
        ),
        (
            one("[profiles.exchange]\nsecret = \"short\"\nmay_exchange_to = [\"a\"]"),
            "at least 32",
        ),
        (
            one("[profiles.client]\nsecret_file = \"/x\"\nextra = 1"),
            "unknown field",
        ),
        (
            two(&format!(
                "service = true\n[profiles.client]\nsecret = \"{SECRET}\"\n[[routes]]\npath = \"/api/a\"\nupstream = \"http://127.0.0.1:9\"\nprofile = \"a\""
            )),
            "cannot attach it",
        ),
        ("[exchange]\nave_client_id = [\"x\"]\n".to_owned(), "unknown field"),
    ] {
        let e = load_file(&toml, &[]).expect_err(&toml);
        assert_eq!(e.0.len(), 1, "one line for {toml}: {e}");
        assert!(e.to_string().contains(needle), "{needle} in {e}");
        assert!(!e.to_string().contains(SECRET), "no secret echoed: {e}");
    }
}

/// docs/token-service.md's configuration loads as it says (its secret files made in a temporary directory).
#[test]
fn the_documented_token_service_config_loads() {
    let readme = include_str!("../../docs/token-service.md");
    let marker = "<!-- token service config: src/config/tests.rs loads exactly this block -->\n```toml\n";
    let start = readme.find(marker).expect("marker in docs/token-service.md") + marker.len();
    let block = &readme[start..start + readme[start..].find("```").expect("block end")];
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["web_exchange", "reports_job"] {
        std::fs::write(dir.path().join(file), "0123456789abcdef0123456789abcdef\n").expect("secret file");
    }
    let toml = block.replace("/run/secrets/", &format!("{}/", dir.path().display()));
    let s = load_file(&toml, &[]).expect("the documented config loads");
    assert_eq!(s.exchange.ave_client_ids, ["app_0123456789abcdef0123456789abcdef"]);
    let p = s.token.profiles();
    assert_eq!(
        p[0].grants.exchange.as_ref().expect("web exchange").may_exchange_to,
        ["orders"]
    );
    assert!(p[1].grants.exchange_from_ave);
    assert!(p[2].grants.service && p[2].grants.client_secret.is_some());
}

#[test]
fn the_spa_from_the_file_or_the_environment_with_every_problem_named_as_written() {
    let dist = tempfile::tempdir().expect("tempdir");
    std::fs::write(dist.path().join("index.html"), "<!doctype html>").expect("write");
    let root = dist.path().display().to_string();
    let s = load_file(
        &format!("[spa]\nroot = \"{root}\"\ncontent_security_policy = \"default-src 'self'\"\n"),
        &[],
    )
    .expect("valid");
    let real = std::fs::canonicalize(dist.path()).expect("real path");
    assert!(matches!(&s.spa.source, Some(SpaSource::Root(r)) if r.path() == real));
    assert!(s.spa.content_security_policy.is_some());
    let s = Settings::load(None, &env(&minimal())).expect("valid");
    assert_eq!(s.spa, SpaSettings::default(), "no SPA unless configured");
    // The environment wins, key by key.
    let s = load_file(
        &format!("[spa]\nroot = \"{root}\"\n"),
        &[("AVEMINT_SPA_UPSTREAM", "http://127.0.0.1:5173")],
    );
    let errors = s.expect_err("both").0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("config file `[spa] root` and AVEMINT_SPA_UPSTREAM: set one of them"),
        "{errors:?}"
    );
    let s = load_file("", &[("AVEMINT_SPA_UPSTREAM", "http://127.0.0.1:5173")]).expect("valid");
    assert!(matches!(&s.spa.source, Some(SpaSource::Upstream(u)) if u.as_str() == "http://127.0.0.1:5173/"));
    let empty = tempfile::tempdir().expect("tempdir");
    let errors = load_file(
        &format!(
            "[spa]\nroot = \"{}\"\ncontent_security_policy = \"\"\nfallback = true\n",
            empty.path().display()
        ),
        &[],
    )
    .expect_err("invalid")
    .0;
    for needle in [
        "config file `[spa] root`: ",
        "config file `[spa] content_security_policy`: must be",
        "config file `[spa]`: unknown key `fallback`",
    ] {
        assert_eq!(
            errors.iter().filter(|e| e.starts_with(needle)).count(),
            1,
            "{needle}: {errors:?}"
        );
    }
    assert!(errors.iter().any(|e| e.contains("has no index.html")), "{errors:?}");
    let errors = load_file("", &[("AVEMINT_SPA_UPSTREAM", "http://vite.internal:5173")])
        .expect_err("plain http off loopback")
        .0;
    assert!(errors[0].starts_with("AVEMINT_SPA_UPSTREAM: "), "{errors:?}");
    let errors = load_file("spa = \"dist\"\n", &[]).expect_err("not a table").0;
    assert!(
        errors[0].starts_with("config file `spa`: must be a table"),
        "{errors:?}"
    );
}

/// A problem names each setting as it was written: the file's key when it came from the file, the variable when
/// from the environment; a missing one by its variable, and its file key too when a file is read.
#[test]
fn problems_name_each_setting_as_it_was_written() {
    let err = load_file("listen = \"127.0.0.1:9000\"\nops_listen = \"127.0.0.1:9000\"\n", &[])
        .expect_err("same address")
        .to_string();
    assert!(
        err.contains("config file `ops_listen`: must differ from config file `listen`"),
        "{err}"
    );
    let err = load_file(
        "ops_listen = \"127.0.0.1:9000\"\n",
        &[("AVEMINT_LISTEN", "127.0.0.1:9000")],
    )
    .expect_err("same address")
    .to_string();
    assert!(
        err.contains("config file `ops_listen`: must differ from AVEMINT_LISTEN"),
        "{err}"
    );
    let mut e = minimal();
    e.push(("AVEMINT_OPS_LISTEN", "127.0.0.1:8080"));
    let err = Settings::load(None, &env(&e)).expect_err("same").to_string();
    assert!(
        err.contains("AVEMINT_OPS_LISTEN: must differ from AVEMINT_LISTEN"),
        "{err}"
    );
    let err = load_file("admin_listen = \"127.0.0.1:9001\"\n", &[])
        .expect_err("no token")
        .to_string();
    assert!(
        err.contains("config file `admin_listen` is set: `admin_token` (or `admin_token_file`) is required"),
        "{err}"
    );
    let mut e = minimal();
    e.push(("AVEMINT_ADMIN_LISTEN", "127.0.0.1:9001"));
    let err = Settings::load(None, &env(&e)).expect_err("no token").to_string();
    assert!(
        err.contains("AVEMINT_ADMIN_LISTEN is set: AVEMINT_ADMIN_TOKEN (or AVEMINT_ADMIN_TOKEN_FILE) is required"),
        "{err}"
    );
    // Missing: by its variable, and by its key when a file is read.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("avemint.toml");
    std::fs::write(&cfg, "issuer = \"https://aveid.net\"\n").expect("write");
    let err = Settings::load(Some(&cfg), &env(&[])).expect_err("missing").to_string();
    assert!(
        err.contains("AVE_CLIENT_ID is required (or `client_id` in the config file)"),
        "{err}"
    );
    assert!(
        err.contains("AVEMINT_SESSION_KEYS is required (or `session_keys` in the config file)"),
        "{err}"
    );
    let err = Settings::load(None, &env(&[])).expect_err("missing").to_string();
    assert!(err.lines().any(|l| l == "AVE_CLIENT_ID is required"), "{err}");
    // A value from the file is named by its key.
    let err = load_file("token_ttl = 0\n", &[]).expect_err("bad ttl").to_string();
    assert!(err.contains("config file `token_ttl`"), "{err}");
    // A secret file is named in log lines as it was written.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret-from-a-file\n").expect("write");
    let toml = format!("client_secret_file = {:?}\n", secret.display().to_string());
    let mut pairs = minimal();
    pairs.retain(|(k, _)| *k != "AVE_CLIENT_SECRET");
    std::fs::write(&cfg, toml).expect("write");
    let s = Settings::load(Some(&cfg), &env(&pairs)).expect("valid");
    let file = s.ave.client_secret_file.expect("from a file");
    assert_eq!(file.setting(), Some("config file `client_secret_file`"));
}

/// An environment with nothing set that records every name asked for.
#[derive(Default)]
struct Recording(std::cell::RefCell<std::collections::BTreeSet<String>>);

impl Env for Recording {
    fn var(&self, name: &str) -> Option<String> {
        self.0.borrow_mut().insert(name.to_owned());
        None
    }
}

/// The settings the configuration reference documents: the `AVE_*`/`AVEMINT_*` variables and the file keys (top-level,
/// and `[spa]`'s as `spa.KEY`) of its settings table, each with the number of rows naming it. A row's names are the
/// backticked ones of its first two cells and, in its meaning, the `_FILE` / `_file` form of them.
fn documented_settings(doc: &str) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let table = doc
        .split("\n| env | file key | meaning | default |\n|---|---|---|---|\n")
        .nth(1)
        .expect("the settings table in docs/configuration.md");
    let ticked = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    let (mut vars, mut keys) = (BTreeMap::new(), BTreeMap::new());
    for row in table.lines().take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim().trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a settings row of four cells: {row}");
        let (env_cell, key_cell, meaning) = (cells[0], cells[1], cells[2]);
        let mut row_vars: Vec<String> = ticked(env_cell)
            .into_iter()
            .filter(|n| n.starts_with("AVE_") || n.starts_with("AVEMINT_"))
            .collect();
        let mut row_keys = Vec::new();
        let key_ticks = ticked(key_cell);
        match key_ticks.first().map(String::as_str) {
            None => {}
            Some("[spa]") => {
                row_keys.push("spa".to_owned());
                row_keys.extend(key_ticks.get(1).map(|k| format!("spa.{k}")));
            }
            Some(t) if t.starts_with('[') => {
                let name = t.trim_matches(|c| c == '[' || c == ']');
                row_keys.push(name.split('.').next().unwrap_or(name).to_owned());
            }
            Some(t) => match key_cell
                .split_once("(in `")
                .and_then(|(_, rest)| rest.split('`').next())
            {
                Some(table) => row_keys.push(table.trim_matches(|c| c == '[' || c == ']').to_owned()),
                None => row_keys.push(t.to_owned()),
            },
        }
        let also = ticked(meaning);
        let file_forms: Vec<String> = row_vars.iter().map(|v| format!("{v}_FILE")).collect();
        row_vars.extend(file_forms.into_iter().filter(|f| also.contains(f)));
        let file_keys: Vec<String> = row_keys.iter().map(|k| format!("{k}_file")).collect();
        row_keys.extend(file_keys.into_iter().filter(|f| also.contains(f)));
        for v in row_vars {
            *vars.entry(v).or_insert(0) += 1;
        }
        for k in row_keys {
            *keys.entry(k).or_insert(0) += 1;
        }
    }
    // The file itself: named in the section's first sentence.
    if doc.contains("A TOML file (`--config PATH` or `AVEMINT_CONFIG`)") {
        *vars.entry("AVEMINT_CONFIG".to_owned()).or_insert(0) += 1;
    }
    (vars, keys)
}

/// docs/configuration.md lists every setting the loader reads, each once, and none it does not: the variables and
/// file keys are those the loader asks for (recorded as it loads), plus the variables the log set-up reads.
#[test]
fn the_configuration_reference_lists_exactly_the_settings_the_loader_reads() {
    let env = Recording::default();
    let mut loader = Loader::new(None, &env).expect("no file to read");
    let _ = loader.settings();
    let mut read_vars = env.0.take();
    // The log format is read before the loader runs, by the log set-up.
    let telemetry = include_str!("../telemetry.rs");
    read_vars.extend(
        telemetry
            .split("std::env::var(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|n| n.starts_with("AVEMINT_") || n.starts_with("AVE_"))
            .map(str::to_owned),
    );
    assert!(read_vars.contains("AVEMINT_LOG_FORMAT"), "{read_vars:?}");
    let read_keys = loader.asked.clone();
    assert!(
        read_keys.contains("spa.root") && read_keys.contains("profiles"),
        "{read_keys:?}"
    );

    let (vars, keys) = documented_settings(include_str!("../../docs/configuration.md"));
    let twice: Vec<_> = vars
        .iter()
        .chain(&keys)
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    // A table's own key (`[[profiles]]`, `[spa]`) has a row per part of it; every other setting has exactly one.
    let twice: Vec<_> = twice
        .into_iter()
        .filter(|k| !["profiles", "spa"].contains(&k.as_str()))
        .collect();
    assert!(
        twice.is_empty(),
        "documented in more than one row of docs/configuration.md: {twice:?}"
    );
    let diff = |a: &std::collections::BTreeSet<String>, b: &BTreeMap<String, usize>| -> (Vec<String>, Vec<String>) {
        (
            a.iter().filter(|n| !b.contains_key(*n)).cloned().collect(),
            b.keys().filter(|n| !a.contains(*n)).cloned().collect(),
        )
    };
    let (undocumented, unread) = diff(&read_vars, &vars);
    assert!(
        undocumented.is_empty(),
        "variables the loader reads, missing from docs/configuration.md: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "variables docs/configuration.md lists that the loader does not read: {unread:?}"
    );
    let (undocumented, unread) = diff(&read_keys, &keys);
    assert!(
        undocumented.is_empty(),
        "file keys the loader reads, missing from docs/configuration.md: {undocumented:?}"
    );
    assert!(
        unread.is_empty(),
        "file keys docs/configuration.md lists that the loader does not read: {unread:?}"
    );
}
