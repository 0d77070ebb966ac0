//! Span export over OTLP/HTTP (protobuf) to a real receiver started here: a sign-in, an app token with
//! a renewal and a claims hook, and a proxied request arrive as spans with the right parent-child
//! links; the `traceparent` Ave, the hook and the upstream receive carries the trace of the span that
//! made the call; an incoming `traceparent` counts only from a trusted proxy; and no token, cookie or
//! secret is in any exported name or attribute.
//!
//! Its own test binary, because it installs the process-wide subscriber with the exporter.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use avemint::config::SecuritySettings;
use avemint::telemetry::Tracing;
use avemint_core::traffic::client_ip::TrustedProxies;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use poem::listener::TcpAcceptor;
use poem::{Endpoint, Request, Response, Server};
use prost::Message as _;
use support::{Options, TestApp};

const JOB_SECRET: &str = "tracing-job-client-secret-0123456789ab";
const HOOK_SECRET: &str = "0123456789abcdef0123456789abcdef-trace-hook-secret";

/// A loopback HTTP server that records what reached it.
struct Recorder<T> {
    base: String,
    seen: Arc<Mutex<Vec<T>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<T: Clone + Send + 'static> Recorder<T> {
    async fn start<E: Endpoint + 'static>(make: impl FnOnce(Arc<Mutex<Vec<T>>>) -> E) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        listener.set_nonblocking(true).expect("nonblocking");
        let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let endpoint = make(seen.clone());
        let task = tokio::spawn(async move {
            let _ = Server::new_with_acceptor(acceptor).run(endpoint).await;
        });
        Self { base, seen, task }
    }

    fn seen(&self) -> Vec<T> {
        self.seen.lock().expect("lock").clone()
    }
}

impl<T> Drop for Recorder<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
struct Collector(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

impl Endpoint for Collector {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        assert_eq!(req.uri().path(), "/v1/traces");
        assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
        let body = req.take_body().into_bytes().await?;
        let export = ExportTraceServiceRequest::decode(body).expect("an ExportTraceServiceRequest");
        self.0.lock().expect("lock").push(export);
        Ok(Response::builder()
            .content_type("application/x-protobuf")
            .body(ExportTraceServiceResponse::default().encode_to_vec()))
    }
}

/// One call to the hook or the upstream: its path and `traceparent`.
#[derive(Clone, Debug)]
struct Call {
    path: String,
    traceparent: Option<String>,
}

/// The claims hook (`/hook`) and the proxy's upstream (anything else).
struct HookAndUpstream(Arc<Mutex<Vec<Call>>>);

impl Endpoint for HookAndUpstream {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_owned();
        self.0.lock().expect("lock").push(Call {
            path: path.clone(),
            traceparent: req.header("traceparent").map(str::to_owned),
        });
        let body = if path == "/hook" {
            r#"{"roles":["reader"]}"#
        } else {
            r#"{"ok":true}"#
        };
        Ok(Response::builder().content_type("application/json").body(body))
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value))
}

/// The spans received, by span id.
struct Spans(HashMap<Vec<u8>, Span>);

impl Spans {
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        self.0.values().filter(move |s| s.name == name)
    }

    /// The request spans (kind `SERVER`, named `METHOD route`).
    fn requests(&self) -> impl Iterator<Item = &Span> + '_ {
        self.0.values().filter(|s| is_request(s))
    }

    /// `span`'s ancestors, nearest first.
    fn ancestors<'a>(&'a self, span: &'a Span) -> Vec<&'a Span> {
        let mut out = Vec::new();
        let mut at = span;
        while let Some(parent) = self.0.get(&at.parent_span_id) {
            assert_eq!(parent.trace_id, span.trace_id, "a parent in another trace");
            out.push(parent);
            at = parent;
        }
        out
    }

    /// The request span above `span`.
    fn request_of<'a>(&'a self, span: &'a Span) -> Option<&'a Span> {
        self.ancestors(span).into_iter().find(|s| is_request(s))
    }
}

fn is_request(span: &Span) -> bool {
    span.kind == SpanKind::Server as i32
}

fn traceparent_of(span: &Span) -> String {
    format!("00-{}-{}-01", hex::encode(&span.trace_id), hex::encode(&span.span_id))
}

#[tokio::test]
async fn spans_arrive_over_otlp_linked_and_propagated_with_no_secret() {
    let collector = Recorder::start(Collector).await;
    let telemetry = avemint::telemetry::init_with_tracing(
        "info",
        false,
        std::io::sink,
        Tracing::Endpoint(format!("{}/v1/traces", collector.base)),
    )
    .expect("exporter builds");
    assert!(telemetry.exporting());
    let outside = Recorder::start(HookAndUpstream).await;
    let base = &outside.base;
    // Renewal always due; the default profile calls the hook; one proxied route (which attaches the default profile,
    // so it says `browser = true` to be minted below too); loopback is a trusted proxy.
    let app = TestApp::spawn_with(Options {
        renewal: Some(support::always_renew()),
        token_toml: Some(format!(
            "[[profiles]]\nname = \"web\"\naudience = \"web\"\ndefault = true\nbrowser = true\n[profiles.hook]\n\
             url = \"{base}/hook\"\nsecret = \"{HOOK_SECRET}\"\n\
             [[profiles]]\nname = \"job\"\naudience = \"jobs\"\nservice = true\n[profiles.client]\nsecret = \"{JOB_SECRET}\"\n"
        )),
        routes_toml: Some(format!("[[routes]]\npath = \"/api/up\"\nupstream = \"{base}/up\"\n")),
        security: Some(SecuritySettings {
            trusted_proxies: TrustedProxies::parse("127.0.0.1").expect("loopback"),
            ..SecuritySettings::default()
        }),
        ..Options::default()
    })
    .await;
    let mut browser = app.signed_in_browser().await;
    let token = app.post_token(&mut browser, true).await;
    assert_eq!(token.status(), 200);
    let app_jwt = token.json::<serde_json::Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let proxied = browser
        .send(app.http.get(app.url("/api/up/items")).header("X-CSRF", "1"))
        .await;
    assert_eq!(proxied.status(), 200);
    // The token service: a service token.
    let service = app
        .http
        .post(app.url("/oauth/token"))
        .basic_auth("job", Some(JOB_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token service");
    assert_eq!(service.status(), 200);
    // From a trusted proxy, the caller's trace context is the parent.
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = app
        .http
        .get(app.url("/healthz"))
        .header("traceparent", caller)
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    // From anyone else, it is not.
    let untrusting = TestApp::spawn().await;
    let untrusted = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01";
    let resp = untrusting
        .http
        .get(untrusting.url("/readyz"))
        .header("traceparent", untrusted)
        .send()
        .await
        .expect("readyz");
    assert_eq!(resp.status(), 200);
    let token_requests = app.emulator.token_requests();
    let (client_secret, issued) = (app.emulator.client_secret().to_owned(), app.emulator.issued_tokens());
    let cookies = browser.set_cookies.clone();
    untrusting.stop().await;
    app.stop().await;

    // Flushing blocks until the receiver (served by this runtime) has answered.
    tokio::task::spawn_blocking(move || telemetry.flush())
        .await
        .expect("flushed");
    let exports = collector.seen();
    assert!(!exports.is_empty(), "spans arrived");
    let mut all = HashMap::new();
    let mut resources = Vec::new();
    for export in &exports {
        for rs in &export.resource_spans {
            resources.extend(rs.resource.iter().flat_map(|r| r.attributes.clone()));
            for ss in &rs.scope_spans {
                for span in &ss.spans {
                    all.insert(span.span_id.clone(), span.clone());
                }
            }
        }
    }
    let spans = Spans(all);
    assert_eq!(attr(&resources, "service.name").as_deref(), Some("avemint"));
    assert!(
        spans.requests().any(|s| s.name == "POST /auth/token"),
        "request spans are named by route"
    );
    for name in [
        "session.lookup",
        "session.renewal_wait",
        "session.refresh",
        "session.lock_wait",
        "ave.token",
        "ave.budget_wait",
        "mint",
        "mint.hook",
        "mint.sign",
        "proxy.upstream",
        "token_service.issue",
    ] {
        assert!(spans.named(name).next().is_some(), "no {name} span");
    }
    // The token service's span is a child of its request's, with the grant and the profiles.
    let issue = spans.named("token_service.issue").next().expect("token service span");
    let request = spans.request_of(issue).expect("under a request");
    assert_eq!(attr(&request.attributes, "route").as_deref(), Some("/oauth/token"));
    assert_eq!(attr(&issue.attributes, "grant").as_deref(), Some("client_credentials"));
    assert_eq!(attr(&issue.attributes, "client").as_deref(), Some("job"));
    assert_eq!(attr(&issue.attributes, "profile").as_deref(), Some("job"));

    // Sign-in: the code exchange is a child of the callback's request span.
    let exchange = spans
        .named("ave.token")
        .find(|s| attr(&s.attributes, "grant_type").as_deref() == Some("authorization_code"))
        .expect("code exchange span");
    let request = spans.request_of(exchange).expect("under a request");
    assert_eq!(attr(&request.attributes, "route").as_deref(), Some("/auth/callback"));
    assert_eq!(attr(&exchange.attributes, "http.status_code").as_deref(), Some("200"));

    // Renewal: request → session.refresh → ave.token (refresh_token), in the request's trace.
    let refresh = spans
        .named("ave.token")
        .find(|s| {
            attr(&s.attributes, "grant_type").as_deref() == Some("refresh_token")
                && spans
                    .request_of(s)
                    .is_some_and(|r| attr(&r.attributes, "route").as_deref() == Some("/auth/token"))
        })
        .expect("a refresh under POST /auth/token");
    let chain: Vec<&str> = spans.ancestors(refresh).iter().map(|s| s.name.as_str()).collect();
    assert!(
        chain.starts_with(&["session.refresh"]) && chain.contains(&"POST /auth/token"),
        "refresh ancestry {chain:?}"
    );

    // What Ave saw: the traceparent of the span that called it.
    let mut propagated = 0;
    for r in &token_requests {
        let tp = r
            .traceparent
            .as_deref()
            .expect("every token request carries a traceparent");
        let caller = spans
            .named("ave.token")
            .find(|s| traceparent_of(s) == tp)
            .unwrap_or_else(|| panic!("Ave saw {tp}, no ave.token span has it"));
        assert_eq!(attr(&caller.attributes, "grant_type"), r.grant_type);
        propagated += 1;
    }
    assert!(propagated >= 2, "code exchange and refreshes");

    // The hook and the upstream: the same, from their own spans.
    let calls = outside.seen();
    for (path, span_name) in [("/hook", "mint.hook"), ("/up/items", "proxy.upstream")] {
        let call = calls
            .iter()
            .find(|c| c.path == path)
            .unwrap_or_else(|| panic!("{path} called"));
        let tp = call
            .traceparent
            .as_deref()
            .unwrap_or_else(|| panic!("{path} got a traceparent"));
        let span = spans
            .named(span_name)
            .find(|s| traceparent_of(s) == tp)
            .unwrap_or_else(|| panic!("{path} saw {tp}, no {span_name} span has it"));
        assert!(spans.request_of(span).is_some(), "{span_name} under a request");
    }

    // The trusted caller's context is the parent; the untrusted one's is ignored.
    let trace = |tp: &str| hex::decode(tp.split('-').nth(1).expect("trace id")).expect("hex");
    let adopted = spans
        .requests()
        .find(|s| s.trace_id == trace(caller))
        .expect("the trusted caller's trace id was adopted");
    assert_eq!(hex::encode(&adopted.parent_span_id), "b7ad6b7169203331");
    assert!(
        spans.requests().all(|s| s.trace_id != trace(untrusted)),
        "an untrusted peer's traceparent is ignored"
    );
    assert!(
        spans
            .requests()
            .any(|s| attr(&s.attributes, "route").as_deref() == Some("/readyz"))
    );

    // No secret anywhere: names, attributes, events, resource.
    let mut exported = Vec::new();
    let push_attrs = |attrs: &[KeyValue], out: &mut Vec<String>| {
        for kv in attrs {
            out.push(format!("{}={}", kv.key, text(&kv.value)));
        }
    };
    push_attrs(&resources, &mut exported);
    for span in spans.0.values() {
        exported.push(span.name.clone());
        exported.push(span.trace_state.clone());
        push_attrs(&span.attributes, &mut exported);
        for event in &span.events {
            exported.push(event.name.clone());
            push_attrs(&event.attributes, &mut exported);
        }
        if let Some(status) = &span.status {
            exported.push(status.message.clone());
        }
    }
    let exported = exported.join("\n");
    let mut secrets: Vec<(String, String)> = vec![
        ("client secret".into(), client_secret),
        ("hook secret".into(), HOOK_SECRET.into()),
        ("app JWT".into(), app_jwt),
        ("session key".into(), support::TEST_SESSION_KEY.into()),
    ];
    for (i, t) in issued.iter().enumerate() {
        secrets.push((format!("Ave token #{i}"), t.clone()));
    }
    for raw in &cookies {
        let pair = raw.split(';').next().unwrap_or_default();
        if let Some((name, value)) = pair.split_once('=')
            && value.len() >= 8
        {
            secrets.push((format!("cookie {name}"), value.to_owned()));
        }
    }
    let parts: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|(label, v)| {
            v.split('.')
                .filter(|p| p.len() >= 16 && v.split('.').count() == 3)
                .map(|p| (format!("{label} (part)"), p.to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    secrets.extend(parts);
    assert!(secrets.len() > 8, "the run handled secrets");
    for (label, secret) in &secrets {
        assert!(!exported.contains(secret.as_str()), "{label} exported");
    }
}
