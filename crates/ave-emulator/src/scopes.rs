//! Ave's scope rules, shared by the sign-in page, the grants and userinfo:
//! how a scope string splits and which scopes the emulated app may ask for.

/// Ave's `parseOAuthScopes`: whitespace and `+` separate scopes.
pub(crate) fn parse_scopes(scope: &str) -> Vec<&str> {
    scope
        .split(|c: char| c.is_whitespace() || c == '+')
        .filter(|s| !s.is_empty())
        .collect()
}

pub(crate) fn has_scope(scope: &str, wanted: &str) -> bool {
    parse_scopes(scope).contains(&wanted)
}

/// The app's default `allowedScopes`, plus the always-allowed dynamic ones.
pub(crate) fn is_scope_allowed(scope: &str) -> bool {
    matches!(scope, "openid" | "profile" | "email" | "offline_access" | "user_id") || scope.starts_with("e2ee:")
}
