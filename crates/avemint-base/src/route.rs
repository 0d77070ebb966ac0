//! The route table: every path avemint answers, once, with what the rest of
//! the code needs to know about it — the metrics label, which per-client
//! sign-in limit counts it, and whether it is an auth API that script calls
//! (so the guard checks its origin, next to the `X-CSRF: 1` the endpoint
//! itself requires) — and which paths are avemint's own, so no proxied route
//! (`proxy::settings`) can take one over.
//!
//! Why a leaf: metrics (a leaf itself) labels requests by it, `traffic` keys
//! its request limits by [`Limited`], and `http` mounts, guards and labels
//! requests from it; none of that needs an HTTP type. The OpenAPI macros need
//! path literals, so `http`'s tests check that the document and this table
//! agree. The admin API's own listener has its own small table, [`AdminRoute`].

/// A route avemint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Login,
    Callback,
    Token,
    Session,
    Logout,
    /// The signed-in user's sessions.
    Sessions,
    /// One of them, by id (`/auth/sessions/{id}`).
    SessionById,
    Jwks,
    OpenIdConfiguration,
    /// Token introspection (RFC 7662) for downstream APIs.
    Introspect,
    /// The token service (RFC 6749 §3.2): client credentials and token exchange (RFC 8693) for non-browser clients.
    OAuthToken,
    Healthz,
    Readyz,
    Metrics,
    SpaHelper,
    OpenApiJson,
    /// The Swagger UI page; its assets below `/docs/` count as this route.
    Docs,
    /// `/`: the demo page under `avemint demo`, otherwise not found.
    Root,
    /// The demo page's script (`avemint demo` only).
    #[cfg(feature = "demo")]
    DemoScript,
    /// The demo page's style sheet (`avemint demo` only).
    #[cfg(feature = "demo")]
    DemoStyle,
    /// The demo downstream API (`avemint demo` only).
    #[cfg(feature = "demo")]
    DemoApi,
}

/// The per-client request limits (`AVEMINT_LOGIN_RATE_LIMIT`): each counts one route, with its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limited {
    Login,
    Callback,
}

impl Route {
    /// Every route, in the order of their metrics label index.
    pub const ALL: &[Route] = &[
        Route::Login,
        Route::Callback,
        Route::Token,
        Route::Session,
        Route::Logout,
        Route::Sessions,
        Route::SessionById,
        Route::Jwks,
        Route::OpenIdConfiguration,
        Route::Introspect,
        Route::OAuthToken,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::SpaHelper,
        Route::OpenApiJson,
        Route::Docs,
        Route::Root,
        #[cfg(feature = "demo")]
        Route::DemoScript,
        #[cfg(feature = "demo")]
        Route::DemoStyle,
        #[cfg(feature = "demo")]
        Route::DemoApi,
    ];

    /// Where every auth endpoint lives (answers there are never cached nor referred).
    pub const AUTH_PREFIX: &str = "/auth/";

    /// The path the route is served at.
    pub const fn path(self) -> &'static str {
        match self {
            Route::Login => "/auth/login",
            Route::Callback => "/auth/callback",
            Route::Token => "/auth/token",
            Route::Session => "/auth/session",
            Route::Logout => "/auth/logout",
            Route::Sessions => "/auth/sessions",
            Route::SessionById => "/auth/sessions/{id}",
            Route::Jwks => "/.well-known/jwks.json",
            Route::OpenIdConfiguration => "/.well-known/openid-configuration",
            Route::Introspect => "/oauth/introspect",
            Route::OAuthToken => "/oauth/token",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::SpaHelper => "/avemint.js",
            Route::OpenApiJson => "/openapi.json",
            Route::Docs => "/docs",
            Route::Root => "/",
            #[cfg(feature = "demo")]
            Route::DemoScript => "/demo.js",
            #[cfg(feature = "demo")]
            Route::DemoStyle => "/demo.css",
            #[cfg(feature = "demo")]
            Route::DemoApi => "/demo/api/hello",
        }
    }

    /// The `route` label of its request metrics: the path template.
    pub(crate) const fn metric_label(self) -> &'static str {
        self.path()
    }

    /// The per-client request limit that counts it: the two browser navigations of a sign-in.
    pub const fn limited(self) -> Option<Limited> {
        match self {
            Route::Login => Some(Limited::Login),
            Route::Callback => Some(Limited::Callback),
            _ => None,
        }
    }

    /// True for the `/auth/*` endpoints called by script (everything there but the two navigations): the
    /// guard refuses them to other origins.
    pub const fn is_auth_api(self) -> bool {
        matches!(
            self,
            Route::Token | Route::Session | Route::Logout | Route::Sessions | Route::SessionById
        )
    }

    /// True for the routes only `avemint demo` serves.
    pub const fn demo_only(self) -> bool {
        #[cfg(feature = "demo")]
        if matches!(self, Route::DemoScript | Route::DemoStyle | Route::DemoApi) {
            return true;
        }
        false
    }

    /// Path trees avemint keeps whole for itself, beyond the table's own paths: nothing below them may be proxied.
    pub(crate) const RESERVED_TREES: &[&str] = &["/auth", "/.well-known", "/oauth"];

    /// The first of avemint's own paths that a proxied prefix would overlap (the same path, one below it, or one
    /// above it), if any. `/` itself is not counted: a prefix is never `/`.
    pub fn own_path_overlapping(prefix: &str) -> Option<&'static str> {
        Route::ALL
            .iter()
            .filter(|r| **r != Route::Root)
            .map(|r| r.path())
            .chain(Route::RESERVED_TREES.iter().copied())
            .find(|own| overlaps(prefix, own))
    }

    /// Whether `serve` answers `path` itself, so nothing else on the origin (the SPA's files) may: one of the
    /// table's paths or a path below it (`/` and the demo's aside), or one below the reserved trees (`/auth`,
    /// `/.well-known`, `/oauth`).
    pub fn is_own(path: &str) -> bool {
        Route::ALL
            .iter()
            .filter(|r| **r != Route::Root && !r.demo_only())
            .map(|r| r.path())
            .chain(Route::RESERVED_TREES.iter().copied())
            .any(|own| overlaps(path, own))
    }

    /// The route `path` is (exactly; any path below `/docs/` is `Docs`; `/auth/sessions/` and one more segment is
    /// `SessionById`).
    pub fn of(path: &str) -> Option<Route> {
        if let Some(route) = Route::ALL.iter().copied().find(|r| r.path() == path) {
            return Some(route);
        }
        let by_id = path
            .strip_prefix(Route::Sessions.path())
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        if by_id {
            return Some(Route::SessionById);
        }
        path.strip_prefix(Route::Docs.path())
            .is_some_and(|rest| rest.starts_with('/'))
            .then_some(Route::Docs)
    }
}

/// A route of the admin API (`http::admin`), served on its own listener only: outside [`Route`], so no path of
/// the public listener is labelled or reserved by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRoute {
    /// A user's sessions.
    UserSessions,
    /// One session, by id.
    SessionById,
    /// Session counts.
    Stats,
}

impl AdminRoute {
    /// Every admin route.
    pub const ALL: &[AdminRoute] = &[AdminRoute::UserSessions, AdminRoute::SessionById, AdminRoute::Stats];

    /// The path template the route is served at (also its label in the admin access log).
    pub const fn path(self) -> &'static str {
        match self {
            AdminRoute::UserSessions => "/admin/users/{sub}/sessions",
            AdminRoute::SessionById => "/admin/sessions/{id}",
            AdminRoute::Stats => "/admin/stats",
        }
    }

    /// The route `path` is counted as: a template with a parameter takes every path that starts with its part
    /// before the parameter (so a user's `sub` or a session id never shows), one without only its own path.
    pub fn of(path: &str) -> Option<AdminRoute> {
        AdminRoute::ALL
            .iter()
            .copied()
            .find(|r| match r.path().split_once('{') {
                Some((fixed, _)) => path.starts_with(fixed),
                None => path == r.path(),
            })
    }
}

/// Whether two path prefixes overlap: equal, or one is a whole-segment prefix of the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    let below = |path: &str, prefix: &str| path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
    a == b || below(a, b) || below(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_routes() {
        for route in Route::ALL {
            assert_eq!(Route::of(route.path()), Some(*route));
        }
        assert_eq!(Route::of("/docs/index.js"), Some(Route::Docs));
        assert_eq!(Route::of("/docsx"), None);
        assert_eq!(Route::of("/auth/token/x"), None);
        assert_eq!(Route::of("/auth/sessions/AbC-_1"), Some(Route::SessionById));
        assert_eq!(Route::of("/auth/sessions/"), None);
        assert_eq!(Route::of("/auth/sessions/a/b"), None);
        assert_eq!(Route::of("/secret-looking-path"), None);
    }

    #[test]
    fn the_table_is_consistent() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(*route as usize, i, "ALL is in declaration order");
            let under_auth = route.path().starts_with(Route::AUTH_PREFIX);
            assert_eq!(
                route.is_auth_api(),
                under_auth && route.limited().is_none(),
                "{route:?}"
            );
            assert!(route.limited().is_none() || under_auth, "{route:?}");
        }
        assert_eq!(Route::Login.limited(), Some(Limited::Login));
        assert_eq!(Route::Callback.limited(), Some(Limited::Callback));
        assert_eq!(Route::Token.limited(), None);
    }

    #[test]
    fn admin_paths_map_to_their_templates() {
        for route in AdminRoute::ALL {
            assert_eq!(AdminRoute::of(route.path()), Some(*route));
        }
        assert_eq!(
            AdminRoute::of("/admin/users/a-sub/sessions"),
            Some(AdminRoute::UserSessions)
        );
        assert_eq!(AdminRoute::of("/admin/sessions/AbC-_1"), Some(AdminRoute::SessionById));
        assert_eq!(AdminRoute::of("/admin/stats/"), None);
        assert_eq!(AdminRoute::of("/admin/users"), None);
        assert_eq!(Route::of("/admin/stats"), None, "not a path of the public listener");
    }

    #[test]
    fn own_paths_are_not_for_proxying() {
        for taken in [
            "/auth",
            "/auth/token",
            "/auth/x/y",
            "/.well-known/x",
            "/healthz",
            "/docs/x",
            "/metrics",
        ] {
            assert!(Route::own_path_overlapping(taken).is_some(), "{taken}");
        }
        for free in ["/api", "/api/orders", "/healthzz", "/authx", "/avemint"] {
            assert_eq!(Route::own_path_overlapping(free), None, "{free}");
        }
        assert!(overlaps("/api", "/api/orders") && overlaps("/api/orders", "/api") && overlaps("/a", "/a"));
        for own in [
            "/auth/login",
            "/auth/x",
            "/auth",
            "/.well-known/jwks.json",
            "/oauth/x",
            "/docs/x",
            "/healthz",
        ] {
            assert!(Route::is_own(own), "{own}");
        }
        for spa in [
            "/",
            "/orders/7",
            "/demo",
            "/demo.js",
            "/authx",
            "/index.html",
            "/assets/a.js",
        ] {
            assert!(!Route::is_own(spa), "{spa}");
        }
        assert!(!overlaps("/api", "/apix"));
    }
}
