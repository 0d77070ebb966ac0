//! Every long-lived proxied answer ends when its session ends (issue 22 §5): a server-sent event stream through a
//! route ends within the documented bound (5 s on the instance that saw the end) after each way a session can end:
//! logout, logout elsewhere (`scope: others` from another session, `scope: all`), the idle timeout, the lifetime
//! (both by the injected clock), the per-user cap, and an administrator ending it; and so does a download generated
//! as it goes (chunked, not an event stream) after a logout. On SQLite and PostgreSQL. Another user's stream, on the
//! same instance, goes on.

mod support;

use std::time::{Duration, Instant};

use avemint_base::clock::{ManualClock, UnixTime};
use avemint_core::session::{DatabaseUrl, SessionSettings};
use bytes::Bytes;
use futures_util::StreamExt as _;
use poem::listener::TcpAcceptor;
use poem::{Body, Request, Response, Server, handler};
use serde_json::{Value, json};
use support::{Browser, Options, TestApp};

/// The bound docs/proxy.md promises (`SESSION_CHECK`), plus what a loaded CI machine needs to read the end.
const BOUND: Duration = Duration::from_millis(6500);
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef-admin";
const HOUR: Duration = Duration::from_secs(3600);

/// An event every 200 ms, for ever; below `…/download`, the same as a download generated as it goes (chunked,
/// not an event stream).
#[handler]
fn ticker(req: &Request) -> Response {
    let events = futures_util::stream::unfold(0u64, |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n"))), i + 1))
    });
    let kind = match req.uri().path().ends_with("/download") {
        true => "application/octet-stream",
        false => "text/event-stream",
    };
    Response::builder()
        .content_type(kind)
        .body(Body::from_bytes_stream(events))
}

/// The upstream: `ticker` on every path; its base URL.
fn start_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    let acceptor = TcpAcceptor::from_std(listener).expect("acceptor");
    let task = tokio::spawn(async move {
        let _ = Server::new_with_acceptor(acceptor).run(ticker).await;
    });
    (base, task)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Logout,
    LogoutOthersFromAnotherSession,
    LogoutAll,
    IdleTimeout,
    Lifetime,
    PerUserCap,
    Admin,
}

impl Trigger {
    const ALL: [Trigger; 7] = [
        Trigger::Logout,
        Trigger::LogoutOthersFromAnotherSession,
        Trigger::LogoutAll,
        Trigger::IdleTimeout,
        Trigger::Lifetime,
        Trigger::PerUserCap,
        Trigger::Admin,
    ];

    /// Whether it ends every session of the instance (the clock moved for all), so no other stream can go on.
    fn ends_everyone(self) -> bool {
        matches!(self, Trigger::IdleTimeout | Trigger::Lifetime)
    }
}

fn system_now() -> UnixTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    UnixTime::from_unsigned(secs)
}

/// An event stream as it arrives.
type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The open stream at `path` of `browser` through the route, once its first event arrived.
async fn open_stream(app: &TestApp, browser: &Browser, path: &str) -> Events {
    let req = app.http.get(app.url(path)).header("X-CSRF", "1");
    let resp = browser.clone().send(req).await;
    assert_eq!(resp.status(), 200);
    let mut stream: Events = Box::pin(resp.bytes_stream());
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "a first event: {first:?}");
    stream
}

/// How long `stream` went on (reading everything) before it ended or was cut, if within `within`.
async fn ends_within(stream: &mut Events, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(within, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                _ => return started.elapsed(),
            }
        }
    })
    .await
    .ok()
}

/// One app, one stream at `path`, one way for its session to end: how long after it the stream ended (`None`: not
/// within twice the bound), and whether another user's stream still flows then.
async fn stream_after(
    trigger: Trigger,
    path: &str,
    db: Option<DatabaseUrl>,
    upstream: &str,
) -> (Option<Duration>, bool) {
    let clock = ManualClock::new(system_now());
    // Each app its own store: a scope, the cap or the clock must reach only its own sessions.
    let db = match db {
        Some(_) => support::postgres_schema(&format!("streams::{trigger:?}")).await,
        None => None,
    };
    let session = match trigger {
        // The lifetime comes first: idle timeout longer than it.
        Trigger::Lifetime => SessionSettings {
            idle_timeout: 3 * HOUR,
            lifetime: HOUR,
            max_sessions_per_user: 0,
        },
        _ => SessionSettings {
            idle_timeout: HOUR,
            lifetime: 24 * HOUR,
            max_sessions_per_user: if trigger == Trigger::PerUserCap { 1 } else { 0 },
        },
    };
    let app = TestApp::spawn_with(Options {
        database_url: db,
        routes_toml: Some(format!(
            "[[routes]]\npath = \"/api/events\"\nupstream = \"{upstream}\"\n"
        )),
        admin_token: Some(ADMIN_TOKEN.into()),
        session: Some(session),
        clock: Some(clock.clock()),
        // `sid_of` reads the sid from an app JWT of the route's (default) profile.
        env: vec![("AVEMINT_TOKEN_BROWSER", "true".into())],
        ..Options::default()
    })
    .await;
    let browser = app.signed_in_as(0).await;
    let bystander = app.signed_in_as(1).await;
    let sid = app.sid_of(&browser).await;
    let mut stream = open_stream(&app, &browser, path).await;
    let mut other = open_stream(&app, &bystander, path).await;

    let logout = |browser: &Browser, body: Option<Value>| {
        let mut req = app.http.post(app.url("/auth/logout")).header("X-CSRF", "1");
        if let Some(body) = body {
            req = req.json(&body);
        }
        let mut browser = browser.clone();
        async move { browser.send(req).await.status().as_u16() }
    };
    let later = |d: Duration| UnixTime::from_secs(clock.clock().now().as_secs() + d.as_secs() as i64 + 1);
    match trigger {
        Trigger::Logout => assert_eq!(logout(&browser, None).await, 204),
        Trigger::LogoutOthersFromAnotherSession => {
            let elsewhere = app.signed_in_as(0).await;
            assert_eq!(logout(&elsewhere, Some(json!({"scope": "others"}))).await, 204);
        }
        Trigger::LogoutAll => {
            let elsewhere = app.signed_in_as(0).await;
            assert_eq!(logout(&elsewhere, Some(json!({"scope": "all"}))).await, 204);
        }
        Trigger::IdleTimeout => clock.set(later(HOUR)),
        Trigger::Lifetime => clock.set(later(HOUR)),
        Trigger::PerUserCap => {
            app.signed_in_as(0).await;
        }
        Trigger::Admin => {
            let url = format!(
                "{}/admin/sessions/{sid}",
                app.admin_address.as_deref().expect("admin API")
            );
            let resp = app
                .http
                .delete(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .expect("admin");
            assert_eq!(resp.status(), 204);
        }
    }
    let ended = ends_within(&mut stream, 2 * BOUND).await;
    let others_flow = if trigger.ends_everyone() {
        true
    } else {
        let next = tokio::time::timeout(Duration::from_secs(2), other.next()).await;
        matches!(next, Ok(Some(Ok(_))))
    };
    (ended, others_flow)
}

async fn a_streamed_answer_ends_within_the_bound_whichever_way_its_session_ends(db: Option<DatabaseUrl>) {
    let (upstream, task) = start_upstream();
    // Every trigger for server-sent events, and a logout for a download generated as it goes.
    let cases: Vec<(Trigger, &str)> = Trigger::ALL
        .iter()
        .map(|t| (*t, "/api/events/ticker"))
        .chain([(Trigger::Logout, "/api/events/download")])
        .collect();
    let runs = cases
        .iter()
        .map(|(t, path)| stream_after(*t, path, db.clone(), &upstream));
    let results = futures_util::future::join_all(runs).await;
    task.abort();
    let mut failures = Vec::new();
    for ((trigger, path), (ended, others_flow)) in cases.iter().zip(results) {
        eprintln!("measured: {trigger:?} ({path}): the stream ended {ended:?} after the session did");
        match ended {
            Some(after) if after <= BOUND => {}
            other => failures.push(format!("{trigger:?} ({path}): ended {other:?} after (bound {BOUND:?})")),
        }
        if !others_flow {
            failures.push(format!("{trigger:?} ({path}): another user's stream stopped too"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

support::on_both_stores!(a_streamed_answer_ends_within_the_bound_whichever_way_its_session_ends(
    flavor = "multi_thread",
    worker_threads = 2
));
