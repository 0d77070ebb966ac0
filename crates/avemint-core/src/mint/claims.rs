//! Custom claims for app JWTs: parsed once from configuration, rendered per token.
//!
//! A claim map holds literal JSON values and references. A reference is a string
//! that is exactly `"{id_token.NAME}"` (a claim of the validated Ave id_token) or
//! `"{user.NAME}"` (a field of Ave's `user` object from sign-in). A reference whose
//! source is absent or JSON `null` is omitted from the token, never rendered as
//! `"null"`. The map's key is the claim's name in the token, so references
//! rename (`{"handle": "{user.handle}"}`). Registered claims cannot be set by
//! configuration. Token profiles (`profiles`) each carry one template.

use serde_json::{Map, Value};

/// Claims avemint always sets itself; configuration that names one is rejected.
pub(crate) const REGISTERED_CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "sid",
    "client_id",
    "act",
];

/// Where a referenced value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimSource {
    /// A claim of the validated id_token.
    IdToken,
    /// A field of Ave's `user` object.
    User,
}

/// One configured claim value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimValue {
    /// Copied into every token as is.
    Literal(Value),
    /// Looked up per session; omitted when absent or null.
    Reference { source: ClaimSource, name: String },
}

/// A validated claim map, in configuration order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimTemplate {
    entries: Vec<(String, ClaimValue)>,
}

/// Why a claim map was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimTemplateError {
    #[error("is not a JSON object")]
    NotAnObject,
    #[error("is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("claim `{0}` is registered and set by avemint itself; it cannot be configured")]
    Registered(String),
    #[error("claim `{0}` has an empty name")]
    EmptyName(String),
    #[error("claim `{claim}` references `{reference}`, but only `{{id_token.NAME}}` and `{{user.NAME}}` exist")]
    UnknownReference { claim: String, reference: String },
}

impl ClaimTemplate {
    /// Parses a JSON object given as text (the `AVEMINT_TOKEN_CLAIMS` form).
    pub fn parse_json(text: &str) -> Result<Self, ClaimTemplateError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ClaimTemplateError::InvalidJson(format!("line {} column {}", e.line(), e.column())))?;
        Self::from_value(value)
    }

    /// Parses an already decoded JSON value (the TOML file form).
    pub fn from_value(value: Value) -> Result<Self, ClaimTemplateError> {
        let Value::Object(map) = value else {
            return Err(ClaimTemplateError::NotAnObject);
        };
        let mut entries = Vec::with_capacity(map.len());
        for (name, value) in map {
            if name.is_empty() {
                return Err(ClaimTemplateError::EmptyName(name));
            }
            if REGISTERED_CLAIMS.contains(&name.as_str()) {
                return Err(ClaimTemplateError::Registered(name));
            }
            let parsed = match &value {
                Value::String(s) => match parse_reference(s) {
                    Some(Ok(reference)) => reference,
                    Some(Err(())) => {
                        return Err(ClaimTemplateError::UnknownReference {
                            claim: name,
                            reference: s.clone(),
                        });
                    }
                    None => ClaimValue::Literal(value),
                },
                _ => ClaimValue::Literal(value),
            };
            entries.push((name, parsed));
        }
        Ok(Self { entries })
    }

    /// True when no claims are configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured claims for one session, borrowed: each claim's name and
    /// value, in configuration order, references resolved and absent or null
    /// ones left out.
    pub(crate) fn rendered<'a>(
        &'a self,
        id_token: &'a Map<String, Value>,
        user: Option<&'a Map<String, Value>>,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.entries.iter().filter_map(move |(name, value)| {
            let rendered = match value {
                ClaimValue::Literal(v) => Some(v),
                ClaimValue::Reference { source, name: field } => {
                    let from = match source {
                        ClaimSource::IdToken => Some(id_token),
                        ClaimSource::User => user,
                    };
                    from.and_then(|m| m.get(field)).filter(|v| !v.is_null())
                }
            };
            rendered.map(|v| (name.as_str(), v))
        })
    }

    /// Renders the configured claims for one session into `out` (owned, for a
    /// claims hook to see and add to).
    pub fn render_into(
        &self,
        id_token: &Map<String, Value>,
        user: Option<&Map<String, Value>>,
        out: &mut Map<String, Value>,
    ) {
        for (name, value) in self.rendered(id_token, user) {
            out.insert(name.to_owned(), value.clone());
        }
    }
}

/// `None`: a plain string. `Some(Err)`: looks like a reference but names no known source.
fn parse_reference(s: &str) -> Option<Result<ClaimValue, ()>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let (source, name) = inner.split_once('.')?;
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':');
    let source = match source {
        "id_token" if valid_name => ClaimSource::IdToken,
        "user" if valid_name => ClaimSource::User,
        _ => return Some(Err(())),
    };
    Some(Ok(ClaimValue::Reference {
        source,
        name: name.to_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn renders_literals_and_references_and_omits_absent_or_null() {
        let t = ClaimTemplate::parse_json(
            r#"{"tier":"gold","n":3,"roles":["a"],"email":"{id_token.email}","pic":"{id_token.picture}","missing":"{id_token.nope}","handle":"{user.handle}"}"#,
        )
        .expect("valid");
        let id = obj(json!({"email":"a@example.com","picture":null}));
        let user = obj(json!({"handle":"ada"}));
        let mut out = Map::new();
        t.render_into(&id, Some(&user), &mut out);
        assert_eq!(
            Value::Object(out),
            json!({"tier":"gold","n":3,"roles":["a"],"email":"a@example.com","handle":"ada"})
        );
    }

    #[test]
    fn rejects_registered_claims_and_non_objects() {
        for name in REGISTERED_CLAIMS {
            let text = format!(r#"{{"{name}":"x"}}"#);
            assert_eq!(
                ClaimTemplate::parse_json(&text),
                Err(ClaimTemplateError::Registered((*name).to_owned()))
            );
        }
        assert_eq!(ClaimTemplate::parse_json("[1]"), Err(ClaimTemplateError::NotAnObject));
        assert!(matches!(
            ClaimTemplate::parse_json("{"),
            Err(ClaimTemplateError::InvalidJson(_))
        ));
        assert!(matches!(
            ClaimTemplate::parse_json(r#"{"x":"{session.id}"}"#),
            Err(ClaimTemplateError::UnknownReference { .. })
        ));
    }

    #[test]
    fn keys_rename_and_one_source_can_feed_several_claims() {
        let t = ClaimTemplate::parse_json(
            r#"{"login":"{user.handle}","handle":"{user.handle}","avatar":"{user.avatarUrl}","mail":"{id_token.email}"}"#,
        )
        .expect("valid");
        let user = obj(json!({"handle":"ada","avatarUrl":null}));
        let mut out = Map::new();
        t.render_into(&obj(json!({"email":"a@example.com"})), Some(&user), &mut out);
        assert_eq!(
            Value::Object(out),
            json!({"login":"ada","handle":"ada","mail":"a@example.com"})
        );
        // Without Ave's `user` object, `{user.*}` references are simply absent.
        let mut out = Map::new();
        t.render_into(&Map::new(), None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn strings_with_braces_inside_text_are_literals() {
        let t = ClaimTemplate::parse_json(r#"{"x":"hello {id_token.email}"}"#).expect("valid");
        let mut out = Map::new();
        t.render_into(&Map::new(), None, &mut out);
        assert_eq!(out.get("x"), Some(&json!("hello {id_token.email}")));
    }

    proptest! {
        #[test]
        fn rendering_never_emits_null_or_registered_claims(
            names in proptest::collection::vec("[a-z_]{1,8}", 0..6),
            present in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..6),
        ) {
            let mut map = Map::new();
            let mut id = Map::new();
            for (i, n) in names.iter().enumerate() {
                if REGISTERED_CLAIMS.contains(&n.as_str()) { continue; }
                map.insert(n.clone(), Value::String(format!("{{id_token.{n}}}")));
                match present.get(i).copied().flatten() {
                    Some(v) => { id.insert(n.clone(), json!(v)); }
                    None => { id.insert(n.clone(), Value::Null); }
                }
            }
            let t = ClaimTemplate::from_value(Value::Object(map)).expect("valid");
            let mut out = Map::new();
            t.render_into(&id, None, &mut out);
            for (k, v) in &out {
                prop_assert!(!v.is_null());
                prop_assert!(!REGISTERED_CLAIMS.contains(&k.as_str()));
            }
        }

        #[test]
        fn arbitrary_templates_render_exactly_what_they_say(
            template in prop::collection::vec((claim_name(), template_value()), 0..8),
            id_token in prop::collection::btree_map("[a-z_]{1,6}", json_value(), 0..6),
            user in proptest::option::of(prop::collection::btree_map("[a-z_]{1,6}", json_value(), 0..6)),
        ) {
            let map: Map<String, Value> = template.into_iter().collect();
            let id: Map<String, Value> = id_token.into_iter().collect();
            let user: Option<Map<String, Value>> = user.map(|u| u.into_iter().collect());
            let Ok(t) = ClaimTemplate::from_value(Value::Object(map.clone())) else {
                // Refused only for a registered name, an empty name or an unknown reference.
                let refusable = map.iter().any(|(k, v)| {
                    k.is_empty()
                        || REGISTERED_CLAIMS.contains(&k.as_str())
                        || v.as_str().is_some_and(|s| matches!(parse_reference(s), Some(Err(()))))
                });
                prop_assert!(refusable);
                return Ok(());
            };
            let mut out = Map::new();
            t.render_into(&id, user.as_ref(), &mut out);
            for (k, v) in &map {
                let expected = match v.as_str().and_then(parse_reference) {
                    Some(Ok(ClaimValue::Reference { source, name })) => {
                        let from = match source {
                            ClaimSource::IdToken => Some(&id),
                            ClaimSource::User => user.as_ref(),
                        };
                        from.and_then(|m| m.get(&name)).filter(|v| !v.is_null()).cloned()
                    }
                    _ => Some(v.clone()),
                };
                prop_assert_eq!(out.get(k), expected.as_ref(), "claim {}", k);
            }
            prop_assert!(out.keys().all(|k| map.contains_key(k)));
        }

        #[test]
        fn parse_json_never_panics_and_agrees_with_from_value(text in ".{0,64}") {
            let parsed = ClaimTemplate::parse_json(&text);
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                prop_assert_eq!(parsed, ClaimTemplate::from_value(v));
            } else {
                prop_assert!(matches!(parsed, Err(ClaimTemplateError::InvalidJson(_))));
            }
        }
    }

    fn claim_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_]{1,6}",
            prop::sample::select(REGISTERED_CLAIMS.to_vec()).prop_map(str::to_owned),
            Just(String::new()),
        ]
    }

    /// Literals, well-formed references to either source, and reference look-alikes.
    fn template_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            json_value(),
            "[a-z_]{1,6}".prop_map(|n| Value::String(format!("{{id_token.{n}}}"))),
            "[a-z_]{1,6}".prop_map(|n| Value::String(format!("{{user.{n}}}"))),
            "\\{[a-z_.{} ]{0,12}\\}?".prop_map(Value::String),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
