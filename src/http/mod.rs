//! The HTTP API (poem-openapi): routes, shared state, error mapping and
//! response headers. Nothing below this module knows HTTP.

pub(crate) mod admin;
pub(crate) mod auth;
pub mod cookies;
pub(crate) mod cors;
#[cfg(feature = "demo")]
pub(crate) mod demo;
#[cfg(feature = "demo")]
pub(crate) mod demo_api;
pub mod docs;
pub(crate) mod errors;
pub(crate) mod introspect;
pub(crate) mod oauth_token;
pub(crate) mod ops;
pub(crate) mod optional_json;
pub(crate) mod prepared_json;
pub(crate) mod proxy;
pub(crate) mod request_id;
pub(crate) mod security;
pub(crate) mod session_guard;
pub(crate) mod session_view;
pub(crate) mod signin_page;
pub(crate) mod spa;
pub(crate) mod spa_host;
pub(crate) mod well_known;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, EndpointExt, Request, Response};
use poem_openapi::{OpenApi, OpenApiService, Tags};
use tracing::Instrument as _;

use avemint_base::clock::Clock;
use avemint_base::route::Route;
use avemint_base::web_url::PublicUrl;
use avemint_core::ave::AveClient;
use avemint_core::mint::Minter;
use avemint_core::session::{Renewer, Sessions};

/// Everything a request handler may use.
pub(crate) struct AppState {
    pub ave: Arc<AveClient>,
    pub sessions: Arc<Sessions>,
    pub renewer: Arc<Renewer>,
    pub minter: Minter,
    pub public_url: PublicUrl,
    pub redirect_uri: String,
    pub scopes: String,
    pub session_cookie_max_age: Duration,
    pub security: security::SecuritySettings,
    /// The store check of `/readyz` and `/metrics`.
    pub store_check: ops::StoreCheck,
    /// Limits failed code exchanges per client network, so junk codes cannot spend Ave's token budget.
    pub sign_in_limiter: avemint_core::traffic::rate_limit::CodeExchangeLimiter,
    /// Limits wrong introspection credentials per client network (429 past the limit).
    pub introspect_limiter: avemint_core::traffic::rate_limit::CredentialLimiter,
    /// Limits the token service's refused credentials and subject tokens per client network (429 past the limit).
    pub token_limiter: avemint_core::traffic::rate_limit::CredentialLimiter,
    /// `[exchange]`: which Ave clients' access tokens the token service exchanges.
    pub exchange: avemint_core::token_service::ExchangeSettings,
    /// The wall clock handlers read (sign-in start and the login cookie's age); shared with sessions, minter and keys.
    pub clock: Clock,
    /// Proxy mode: the routes, the upstream client and the cache of app JWTs attached upstream.
    pub proxy: avemint_core::proxy::Proxy,
    /// The SPA on avemint's origin (`[spa]`: its files, its development server, or none) and `error_path` (where a
    /// browser whose sign-in failed is sent): those in use, replaced whole by a configuration reload.
    pub spa: spa_host::LiveSpa,
}

/// OpenAPI tags.
#[derive(Tags)]
pub(crate) enum ApiTags {
    /// Sign-in, session and app-JWT endpoints used by the browser.
    Auth,
    /// The token service for programs (native apps, APIs calling APIs, background jobs): `POST /oauth/token`.
    TokenService,
    /// Keys and metadata for downstream verifiers.
    WellKnown,
    /// Health and readiness.
    Ops,
}

/// Which routes to mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `avemint serve`: the real thing.
    Serve,
    /// `avemint demo`: adds the demo page and the demo API. Only the `demo` command builds this (`demo` feature).
    #[cfg(feature = "demo")]
    Demo,
}

impl Mode {
    /// Whether this mode serves `route`.
    pub(crate) fn serves(self, route: Route) -> bool {
        match self {
            Mode::Serve => !route.demo_only(),
            #[cfg(feature = "demo")]
            Mode::Demo => true,
        }
    }
}

type Apis = security::Guarded<(
    auth::AuthApi,
    introspect::IntrospectApi,
    oauth_token::OAuthTokenApi,
    well_known::WellKnownApi,
    ops::OpsApi,
    proxy::ProxyDoc,
)>;

/// The OpenAPI service (also used by `avemint openapi`; needs no running state).
pub(crate) fn openapi_service() -> OpenApiService<Apis, ()> {
    OpenApiService::new(
        security::Guarded((
            auth::AuthApi,
            introspect::IntrospectApi,
            oauth_token::OAuthTokenApi,
            well_known::WellKnownApi,
            ops::OpsApi,
            proxy::ProxyDoc,
        )),
        "avemint",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Backend-for-frontend sign-in with Ave plus an app-JWT issuer. Every JSON error is \
             `{error, error_description}`. Endpoints under /auth that change or reveal state require the header \
             `X-CSRF: 1`. Cookies: `__Host-avemint` (session) and `__Host-avemint-login` (pending sign-in), both \
             HttpOnly, Secure, SameSite=Lax, Path=/. Requests to those endpoints that carry an `Origin` (or \
             `Sec-Fetch-Site`) from another origin are refused with 403 unless the origin is in \
             `AVEMINT_ALLOWED_ORIGINS`. Oversized input is refused before parsing: Cookie headers over 4 KiB not counting avemint's own two cookies (431), \
             a query over 8 KiB (414), a body over 64 KiB (413). A method an endpoint does not list is answered \
             405 with an `Allow` header. Proxied routes (proxy mode) are configuration: the document a running \
             avemint serves (`/openapi.json`, `/docs`) lists each configured route under the `Proxy` tag, which \
             describes the answers avemint gives on them.",
    )
}

/// The OpenAPI document as YAML (what `openapi/openapi.yaml` holds).
pub fn openapi_yaml() -> String {
    openapi_service().spec_yaml()
}

/// Builds the whole HTTP application: the routes `mode` serves; `/metrics` too unless the ops listener
/// serves it (`ops_apart`).
pub(crate) fn routes(state: Arc<AppState>, mode: Mode, ops_apart: bool) -> impl Endpoint + 'static {
    let api = openapi_service();
    let route = match ops_apart {
        true => poem::Route::new(),
        false => poem::Route::new().at(Route::Metrics.path(), poem::get(metrics_endpoint)),
    };
    // `AVEMINT_DOCS=off` leaves both out (404).
    let route = match state.security.docs {
        security::Docs::On => {
            let page = Arc::new(docs::DocsPage::new(api.swagger_ui_html()));
            route
                .at(Route::OpenApiJson.path(), docs::SpecEndpoint::new(&api.spec()))
                .at(Route::Docs.path(), poem::get(page.clone()))
                .at(format!("{}/", Route::Docs.path()), poem::get(page))
        }
        security::Docs::Off => route,
    };
    // `AVEMINT_TOKEN_ENDPOINT=off` removes `POST /auth/token` (404 like any unknown path).
    let route = match state.security.token_endpoint {
        security::TokenEndpoint::On => route,
        security::TokenEndpoint::Off => route.at(Route::Token.path(), not_found),
    };
    let router = route.nest("/", api).map_to_response().boxed();
    let guard = security::Guard::new(&state.public_url, state.security.clone());
    App {
        router,
        mode,
        guard,
        allow: allowed_methods(),
        state,
    }
}

/// The proxied route a request's path is in, with its metrics: found once per request, in the request's one
/// snapshot of the route table, for the span, the guard, the handler and the metrics alike.
type Proxied<'a> = Option<(
    &'a avemint_core::proxy::RouteSettings,
    &'a avemint_base::metrics::ProxyRouteMetrics,
)>;

/// The public listener's application. Around every request: its id and span, the security policy, metrics and
/// one access line (`respond`). Inside: the one handler [`App::handle`] matches for it.
struct App {
    /// The API's router (the OpenAPI operations, docs, metrics).
    router: poem::endpoint::BoxEndpoint<'static>,
    mode: Mode,
    guard: Arc<security::Guard>,
    /// The `Allow` header value of each path in the OpenAPI document.
    allow: HashMap<String, HeaderValue>,
    state: Arc<AppState>,
}

impl Endpoint for App {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        Ok(respond(self, req).await)
    }
}

impl App {
    /// Answers an admitted request. The handler is matched here, in the order the paths take precedence, before
    /// the API's router, so a proxied call or an SPA file never goes through the router's endpoint stack: the demo's
    /// page and assets (`avemint demo`), a proxied route, `/avemint.js`, the SPA's files or dev server, and then the
    /// router. Proxied prefixes overlap none of avemint's own paths, and the SPA takes none of them either.
    /// `spa` is the request's SPA settings when the SPA takes the request (`Spa::takes`, decided once by the caller).
    async fn handle(&self, mut req: Request, proxied: Proxied<'_>, spa: Option<&spa_host::SpaInUse>) -> Response {
        // The handlers' `Data<&Arc<AppState>>`.
        req.extensions_mut().insert(self.state.clone());
        #[cfg(feature = "demo")]
        if self.mode == Mode::Demo
            && let Some(resp) = demo::handle(&req)
        {
            return resp;
        }
        if let Some((route, metrics)) = proxied {
            // Boxed, like the router's endpoints: every request's future stays small (it is moved while it starts).
            return Box::pin(proxy::handle(&self.state, route, metrics, req)).await;
        }
        if let Some(resp) = spa::handle(req.method(), req.uri().path()) {
            return resp;
        }
        if let Some(spa) = spa {
            req = match Box::pin(spa_host::handle(&self.state, spa, req)).await {
                Ok(resp) => return resp,
                Err(req) => req,
            };
        }
        match self.router.call(req).await {
            Ok(resp) => resp,
            Err(e) => errors::catch_all(e).await,
        }
    }
}

/// A path that is switched off: the JSON 404 of any unknown path.
#[poem::handler]
fn not_found() -> poem::Result<()> {
    Err(poem::error::NotFoundError.into())
}

/// The ops listener's application (`AVEMINT_OPS_LISTEN`): `/metrics`, `/healthz` and `/readyz`, the same
/// handlers as on the public listener; anything else is a JSON 404.
pub(crate) fn ops_routes(state: Arc<AppState>) -> impl Endpoint + 'static {
    let probes = OpenApiService::new(ops::OpsApi, "avemint ops", env!("CARGO_PKG_VERSION"));
    poem::Route::new()
        .at(Route::Metrics.path(), poem::get(metrics_endpoint))
        .nest("/", probes)
        .data(state)
        .catch_all_error(errors::catch_all)
}

/// The `Allow` header value of each path in the OpenAPI document (`HEAD` wherever `GET` is: the
/// router answers it). Everything served outside the document (docs, spec, metrics, pages) is `GET`.
fn allowed_methods() -> HashMap<String, HeaderValue> {
    let mut methods: HashMap<String, Vec<String>> = HashMap::new();
    for path in Apis::meta().into_iter().flat_map(|api| api.paths) {
        let list = methods.entry(path.path).or_default();
        for op in path.operations {
            if op.method == poem::http::Method::GET {
                list.push("HEAD".into());
            }
            list.push(op.method.to_string());
        }
    }
    methods
        .into_iter()
        .filter_map(|(path, mut list)| {
            list.sort();
            HeaderValue::from_str(&list.join(", ")).ok().map(|v| (path, v))
        })
        .collect()
}

/// `GET /metrics`: Prometheus text exposition (not part of the OpenAPI document), this instance's
/// scrape-time gauges (store pool, Ave's budget and back-pressure, readiness: `ops::Readiness`) included.
#[poem::handler]
async fn metrics_endpoint(state: poem::web::Data<&Arc<AppState>>) -> Response {
    let readiness = ops::Readiness::check(&state).await.gauges();
    let pool = state.sessions.store().pool_stats();
    let budget = state.ave.token_budget();
    let (paused, circuit) = state.ave.back_pressure();
    let body = avemint_base::metrics::scrape(|| {
        if let Some(pool) = pool {
            avemint_base::metrics::store_pool(pool.in_use, pool.idle, pool.max);
        }
        avemint_base::metrics::ave_budget(0, budget.renewal_used, budget.per_minute, budget.renewal_waiting);
        avemint_base::metrics::ave_budget(1, budget.sign_in_used, budget.sign_in_limit, budget.sign_in_waiting);
        avemint_base::metrics::ave_back_pressure(paused, circuit as u8);
        avemint_base::metrics::readiness(&readiness);
    });
    Response::builder()
        .content_type(avemint_base::metrics::CONTENT_TYPE)
        .body(body)
}

/// Gives the request its id and span (`request_id`), answers it inside the span, and returns the id in
/// `X-Request-Id`.
async fn respond(app: &App, mut req: Request) -> Response {
    let method = req.method().clone();
    let id = request_id::RequestId::of(req.headers());
    let served = Route::of(req.uri().path()).filter(|r| app.mode.serves(*r));
    // One snapshot of the proxied routes for the whole request (a reload may replace them meanwhile).
    let routes = app.state.proxy.routes().current();
    let proxied = routes.find(req.uri().path());
    let label = request_id::route_label(served, proxied.map(|(route, _)| route.path.as_str()));
    let span = request_id::span(&id, &method, label);
    // The proxy sends it upstream.
    req.extensions_mut().insert(id.clone());
    if app.guard.trusts_peer(&req) {
        avemint_base::trace_context::adopt(&span, req.headers());
    }
    let mut resp = respond_in_span(app, req, served, proxied)
        .instrument(span.clone())
        .await;
    span.record("status", resp.status().as_u16());
    if let Some(value) = id.header_value() {
        resp.headers_mut().insert(request_id::HEADER, value);
    }
    resp
}

/// Access lines of answers an outage or a flood repeats, per route label and status (`log_gate`).
static REPEATED_ANSWERS: avemint_base::log_gate::LogGate<(avemint_base::metrics::RouteLabel, u16)> =
    avemint_base::log_gate::LogGate::new(avemint_base::log_gate::OUTAGE_INTERVAL);

/// Applies the security policy, records metrics and logs one access line per request (path only: queries carry
/// codes).
async fn respond_in_span(app: &App, req: Request, served: Option<Route>, proxied: Proxied<'_>) -> Response {
    let (guard, allow) = (&app.guard, &app.allow);
    let method = req.method().clone();
    // One snapshot of the SPA settings for the whole request (a reload may replace them meanwhile).
    let spa = app.state.spa.current();
    let started = Instant::now();
    // A person's browser, sent here by Ave or a link: a failure becomes a page (`signin_page`), not JSON.
    let sign_in = signin_page::SignInNavigation::of(req.uri().path(), req.uri().query(), req.headers());
    let (seen, admitted) = guard.admit(req, proxied.map(|(route, _)| route)).await;
    let spa_takes = proxied.is_none() && spa.spa.takes(&method, &seen.path);
    let route = match proxied {
        Some(_) => avemint_base::metrics::RouteLabel::PROXIED,
        None if spa_takes => avemint_base::metrics::RouteLabel::SPA,
        None => avemint_base::metrics::RouteLabel::of(served),
    };
    let mut resp = match admitted {
        Ok(mut req) => {
            // Cookie changes reach the answer whatever it is, errors included.
            let changes = cookies::CookieChanges::default();
            req.extensions_mut().insert(changes.clone());
            if let Some(sign_in) = &sign_in {
                req.extensions_mut().insert(sign_in.retry());
            }
            let mut resp = app.handle(req, proxied, spa_takes.then_some(&*spa)).await;
            changes.apply(&mut resp);
            resp
        }
        Err(refused) => refused,
    };
    if let Some(sign_in) = sign_in {
        resp = sign_in.render(resp, spa.error_path.as_ref()).await;
    }
    // A proxied route's 405 (avemint's or the upstream's) brings its own `Allow`.
    if resp.status() == StatusCode::METHOD_NOT_ALLOWED && !resp.headers().contains_key(header::ALLOW) {
        // Keyed by the document's path templates (`/auth/sessions/{id}`).
        let template: &str = match Route::of(&seen.path) {
            Some(route) => route.path(),
            None => &seen.path,
        };
        let methods = allow.get(template).cloned();
        resp.headers_mut()
            .insert(header::ALLOW, methods.unwrap_or(HeaderValue::from_static("GET, HEAD")));
    }
    guard.finish(&mut resp, &seen);
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    avemint_base::metrics::record_request(route, status, elapsed);
    if let Some((_, metrics)) = proxied {
        metrics.request(status);
    }
    macro_rules! access {
        ($level:expr $(, $field:ident = $value:expr)*) => {
            tracing::event!(target: "avemint::access", $level, %method, path = %seen.path, client_ip = %seen.client, status, elapsed_ms = elapsed.as_millis() as u64, $($field = $value,)* "request")
        };
    }
    // Refused and failed requests at `info`, the rest at `debug` (every request: `RUST_LOG=info,avemint::access=debug`).
    // Answers an outage or a flood repeats (429, 502, 503, 504) at `info` once per route and status every 10 s, with
    // the count of the lines held back; the others at `debug`. Counts and latencies of all requests are in `/metrics`.
    match status {
        429 | 502..=504 => match REPEATED_ANSWERS.pass_for((route, status)) {
            Some(held_back) => access!(tracing::Level::INFO, similar_lines_held_back = held_back),
            None => access!(tracing::Level::DEBUG),
        },
        400.. => access!(tracing::Level::INFO),
        _ => access!(tracing::Level::DEBUG),
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI macros spell their paths as literals: each must be the route table's.
    #[test]
    fn the_openapi_document_and_the_route_table_agree() {
        for path in Apis::meta().into_iter().flat_map(|api| api.paths) {
            assert_eq!(Route::of(&path.path).map(Route::path), Some(path.path.as_str()));
        }
    }

    /// Every request's future is moved while it starts (hyper boxes it, and each await stores its callee), so its
    /// size is copied several times per request: a large await on a rare path (reading a body, a cache miss, a
    /// proxied call) must be boxed. Issue 25's profile found 10 KiB here and 14 % of a token request in `memcpy`.
    #[test]
    fn every_request_future_stays_small() {
        fn size<'a, F: std::future::Future>(_: fn(&'a App, Request) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let bytes = size(respond);
        assert!(bytes <= 6 * 1024, "a request's future is {bytes} bytes");
    }

    #[test]
    fn serve_leaves_the_demo_routes_out() {
        for route in Route::ALL {
            assert_eq!(Mode::Serve.serves(*route), !route.demo_only(), "{route:?}");
            #[cfg(feature = "demo")]
            assert!(Mode::Demo.serves(*route));
        }
    }
}
