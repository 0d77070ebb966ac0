//! Who may use a proxied route: its `auth` mode (a session required, optional, or none at all) and its
//! `require_claims`, which must hold on the app JWT of the route's profile before the upstream is called.
//!
//! Why its own module: both are policy over configuration and claims, with no HTTP type; the HTTP adapter
//! (`http::proxy`) reads the session as the mode says and answers 403 `access_denied` when the claims do not hold.

use serde_json::{Map, Value};

/// `[[routes]] auth`: whether a proxied route needs a session and carries a bearer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteAuth {
    /// A session is needed (401 `login_required` without one, the upstream is never called); the app JWT of the
    /// route's profile is always attached. The default.
    #[default]
    Required,
    /// The app JWT is attached when the request has a live session; without one (no cookie, an unknown or ended
    /// session) the request goes upstream without `Authorization`.
    Optional,
    /// No session is read and no app JWT attached: a public API. Safe methods (`GET`, `HEAD`, `OPTIONS`) need
    /// neither `X-CSRF` nor a same-origin `Origin`; other methods still do.
    None,
}

impl RouteAuth {
    /// `required`, `optional` or `none`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "required" => Ok(Self::Required),
            "optional" => Ok(Self::Optional),
            "none" => Ok(Self::None),
            other => Err(format!(
                "`auth` must be \"required\", \"optional\" or \"none\", not `{other}`"
            )),
        }
    }
}

/// `[[routes]] require_claims`: for each claim name, the values one of which the claim must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredClaims(Vec<(String, Vec<Value>)>);

impl RequiredClaims {
    /// A table of claim names to a value (a string, a whole number or a boolean) or a non-empty array of them
    /// (any of which will do). Every problem is one line.
    pub fn parse(table: Map<String, Value>) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut required = Vec::with_capacity(table.len());
        for (name, wanted) in table {
            let values = match wanted {
                Value::Array(values) if !values.is_empty() && values.iter().all(is_plain) => values,
                value if is_plain(&value) => vec![value],
                _ => {
                    errors.push(format!(
                        "`require_claims`: `{name}` must be a string, a whole number or a boolean, or a non-empty \
                         array of them"
                    ));
                    continue;
                }
            };
            if name.is_empty() {
                errors.push("`require_claims`: a claim name must not be empty".into());
                continue;
            }
            required.push((name, values));
        }
        if errors.is_empty() {
            Ok(Self(required))
        } else {
            Err(errors)
        }
    }

    /// True when the route requires no claim.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first required claim that `claims` (an app JWT's payload) does not satisfy, if any. A claim satisfies
    /// its requirement when it is one of the required values or, for an array claim, has one of them among its
    /// elements. An absent claim satisfies nothing.
    pub fn unmet<'a>(&'a self, claims: &Map<String, Value>) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(name, wanted)| !match claims.get(name) {
                Some(Value::Array(held)) => held.iter().any(|h| wanted.contains(h)),
                Some(held) => wanted.contains(held),
                None => false,
            })
            .map(|(name, _)| name.as_str())
    }
}

/// A value a required claim may be compared with: a string, a whole number or a boolean.
fn is_plain(value: &Value) -> bool {
    match value {
        Value::String(_) | Value::Bool(_) => true,
        Value::Number(n) => n.is_i64() || n.is_u64(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn required(v: Value) -> Result<RequiredClaims, Vec<String>> {
        match v {
            Value::Object(map) => RequiredClaims::parse(map),
            _ => panic!("an object"),
        }
    }

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(map) => map,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn auth_modes_parse() {
        assert_eq!(RouteAuth::parse("required"), Ok(RouteAuth::Required));
        assert_eq!(RouteAuth::parse("optional"), Ok(RouteAuth::Optional));
        assert_eq!(RouteAuth::parse("none"), Ok(RouteAuth::None));
        assert_eq!(RouteAuth::default(), RouteAuth::Required);
        for bad in ["Required", "", "public", "off"] {
            assert!(RouteAuth::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_key_must_hold_a_value_in_the_claim_an_array_meaning_any_of() {
        let r = required(json!({"roles": "admin", "tier": ["gold", "platinum"]})).expect("valid");
        let holds = |c: Value| r.unmet(&claims(c));
        assert_eq!(holds(json!({"roles": ["reader", "admin"], "tier": "gold"})), None);
        assert_eq!(holds(json!({"roles": "admin", "tier": ["platinum", "x"]})), None);
        assert_eq!(holds(json!({"roles": ["reader"], "tier": "gold"})), Some("roles"));
        assert_eq!(holds(json!({"roles": "admin", "tier": "silver"})), Some("tier"));
        assert_eq!(
            holds(json!({"roles": "admin"})),
            Some("tier"),
            "an absent claim holds nothing"
        );
        assert_eq!(
            holds(json!({"roles": "Admin", "tier": "gold"})),
            Some("roles"),
            "compared exactly"
        );
        assert_eq!(holds(json!({"roles": {"admin": true}, "tier": "gold"})), Some("roles"));
        let n = required(json!({"level": [2, 3], "staff": true})).expect("valid");
        assert_eq!(n.unmet(&claims(json!({"level": 3, "staff": true}))), None);
        assert_eq!(n.unmet(&claims(json!({"level": "3", "staff": true}))), Some("level"));
        assert_eq!(n.unmet(&claims(json!({"level": 2, "staff": "true"}))), Some("staff"));
        assert!(required(json!({})).expect("valid").is_empty());
        assert_eq!(required(json!({})).expect("valid").unmet(&Map::new()), None);
    }

    #[test]
    fn values_that_cannot_be_compared_are_refused_one_line_each() {
        let errors = required(json!({"a": [], "b": {"x": 1}, "c": [1, [2]], "d": 1.5, "e": null, "": "x", "ok": "y"}))
            .expect_err("invalid");
        assert_eq!(errors.len(), 6, "{errors:#?}");
        for name in ["`a`", "`b`", "`c`", "`d`", "`e`"] {
            assert!(errors.iter().any(|e| e.contains(name)), "{name}: {errors:#?}");
        }
        assert!(errors.iter().any(|e| e.contains("must not be empty")), "{errors:#?}");
    }
}
