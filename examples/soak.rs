//! Soak benchmark driver (`bench/soak.sh`): several `avemint serve` processes
//! sharing one PostgreSQL schema, Ave (the emulator) behind the fault-injecting
//! proxy of the tests, a few dozen sessions renewing continuously, and one of
//! the faults of issue 12 injected every minute. Samples each process's RSS and
//! open file descriptors and the store's connections, and reports them with the
//! sessions lost, every answer by status, and whether a refresh token was ever
//! presented twice at the same time.
//!
//! Environment: `AVEMINT_BIN` (the binary to soak, required),
//! `SOAK_DATABASE_URL` (PostgreSQL, required), `SOAK_DURATION` (seconds, 600),
//! `SOAK_SESSIONS` (40), `SOAK_INSTANCES` (2), `SOAK_FAULT_SECS` (15),
//! `SOAK_FAULTS` (the faults taken in turn, comma-separated: `refused`,
//! `reset`, `stall_reset`, `stall`, `500`, `429`, default all; `none` for a
//! healthy run), `SOAK_SERIES` (a file: every `SOAK_SCRAPE_SECS` (15) each
//! instance's `/metrics` is scraped and the series are written there as a
//! `promtool test rules` `input_series` list; `deploy/prometheus/record-series.sh`).

#[path = "../tests/support/fault_proxy.rs"]
#[allow(dead_code)]
mod fault_proxy;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ave_emulator::{EmulatedUser, Emulator, EmulatorConfig, TokenFailure};
use fault_proxy::{Fault, FaultProxy};

const ACCESS_TTL: u64 = 15;
const SKEW: &str = "5";
const REQUEST_EVERY: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const APP_NAME: &str = "avemint-soak";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy)]
enum TrialFault {
    ConnectionRefused,
    ResetAfterRequest,
    StallThenReset,
    StallPastTimeout,
    Status500,
    RateLimited,
}

const FAULTS: [(&str, TrialFault); 6] = [
    ("refused", TrialFault::ConnectionRefused),
    ("reset", TrialFault::ResetAfterRequest),
    ("stall_reset", TrialFault::StallThenReset),
    ("stall", TrialFault::StallPastTimeout),
    ("500", TrialFault::Status500),
    ("429", TrialFault::RateLimited),
];

/// The faults `SOAK_FAULTS` names (default: all, in turn; `none`: a healthy run).
fn faults_from_env() -> Result<Vec<TrialFault>, Error> {
    let Ok(names) = std::env::var("SOAK_FAULTS") else {
        return Ok(FAULTS.iter().map(|(_, f)| *f).collect());
    };
    if names.trim() == "none" {
        return Ok(Vec::new());
    }
    names
        .split(',')
        .map(|name| {
            FAULTS
                .iter()
                .find(|(n, _)| *n == name.trim())
                .map(|(_, f)| *f)
                .ok_or_else(|| format!("SOAK_FAULTS: unknown fault {name:?}").into())
        })
        .collect()
}

/// The metric families the alert rules (deploy/prometheus/avemint-alerts.yaml) read, as recorded series.
const RECORDED: &[&str] = &[
    "avemint_session_refresh_total",
    "avemint_http_requests_total",
    "avemint_ave_request_errors_total",
    "avemint_ave_budget_refused_total",
    "avemint_ave_budget_wait_seconds_count",
    // Only its `le="0.001"` bucket: the waits that were none.
    "avemint_ave_budget_wait_seconds_bucket",
    "avemint_ready",
    "avemint_store_up",
    "avemint_ave_metadata_stale",
];

/// Scrapes of every instance's `/metrics`: per series (with `job` and `instance` labels), its value at each scrape.
#[derive(Default)]
struct Recording {
    scrapes: usize,
    series: BTreeMap<String, Vec<Option<String>>>,
}

impl Recording {
    /// Adds one scrape of `text` (the exposition format) from instance `i` as scrape number `self.scrapes - 1`.
    fn add(&mut self, i: usize, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (name_labels, ""),
            };
            if !RECORDED.contains(&name) || (name.ends_with("_bucket") && !labels.contains("le=\"0.001\"")) {
                continue;
            }
            let ours = format!("job=\"avemint\",instance=\"avemint-{i}\"");
            let labels = if labels.is_empty() {
                ours
            } else {
                format!("{labels},{ours}")
            };
            let values = self
                .series
                .entry(format!("{name}{{{labels}}}"))
                .or_insert_with(|| vec![None; self.scrapes - 1]);
            values.resize(self.scrapes - 1, None);
            values.push(Some(value.to_owned()));
        }
    }

    /// The series as `promtool test rules` `input_series` (`_`: no sample); counters that stayed 0 throughout
    /// (a route never answered with that status, say) are left out.
    fn input_series(&self) -> String {
        let mut out = String::new();
        for (series, values) in &self.series {
            let zero = values.iter().all(|v| v.as_deref().is_none_or(|v| v == "0"));
            if zero && series.contains("_total{") {
                continue;
            }
            let values: Vec<&str> = (0..self.scrapes)
                .map(|i| values.get(i).and_then(|v| v.as_deref()).unwrap_or("_"))
                .collect();
            out.push_str(&format!("- series: '{series}'\n  values: '{}'\n", values.join(" ")));
        }
        out
    }
}

async fn apply(fault: Option<TrialFault>, proxy: &FaultProxy, emulator: &Emulator) {
    proxy.set_fault(Fault::None).await;
    emulator.set_token_failure(None);
    match fault {
        None => {}
        Some(TrialFault::ConnectionRefused) => proxy.set_fault(Fault::Refuse).await,
        Some(TrialFault::ResetAfterRequest) => proxy.set_fault(Fault::ResetAfterRequest).await,
        Some(TrialFault::StallThenReset) => proxy.set_fault(Fault::StallThenReset(Duration::from_secs(3))).await,
        Some(TrialFault::StallPastTimeout) => proxy.set_fault(Fault::Stall).await,
        Some(TrialFault::Status500) => emulator.set_token_failure(Some(TokenFailure::Status(500))),
        Some(TrialFault::RateLimited) => {
            emulator.set_token_failure(Some(TokenFailure::RateLimited { retry_after_secs: 5 }))
        }
    }
}

/// A cookie jar for one session (the session cookie is all that matters here).
#[derive(Clone, Default)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    async fn send(&mut self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let mut req = req;
        if !self.0.is_empty() {
            let header = self
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            req = req.header(reqwest::header::COOKIE, header);
        }
        let resp = req.send().await?;
        for value in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let raw = value.to_str()?;
            let pair = raw.split(';').next().unwrap_or_default();
            if let Some((name, value)) = pair.split_once('=') {
                if value.is_empty() || raw.to_ascii_lowercase().contains("max-age=0") {
                    self.0.remove(name.trim());
                } else {
                    self.0.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
        }
        Ok(resp)
    }
}

fn location(resp: &reqwest::Response) -> Result<String, Error> {
    Ok(resp
        .headers()
        .get(reqwest::header::LOCATION)
        .ok_or("no Location")?
        .to_str()?
        .to_owned())
}

async fn sign_in(http: &reqwest::Client, emulator: &Emulator, base: &str, user: &str) -> Result<Jar, Error> {
    let mut jar = Jar::default();
    let resp = jar.send(http.get(format!("{base}/auth/login"))).await?;
    emulator.set_auto_approve(Some(user.to_owned()));
    let resp = http.get(location(&resp)?).send().await?;
    let resp = jar.send(http.get(location(&resp)?)).await?;
    if resp.status() != 302 || !jar.0.contains_key("__Host-avemint") {
        return Err(format!("sign-in failed: {}", resp.status()).into());
    }
    Ok(jar)
}

struct Instance {
    base: String,
    child: Child,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_instance(bin: &str, emulator: &Emulator, db: &str, keys: &std::path::Path) -> Result<Instance, Error> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin)
        .arg("serve")
        .env_clear()
        .env("AVE_CLIENT_ID", emulator.client_id())
        .env("AVE_CLIENT_SECRET", emulator.client_secret())
        .env("AVE_ISSUER", emulator.issuer())
        .env("AVEMINT_PUBLIC_URL", &base)
        .env("AVEMINT_LISTEN", format!("127.0.0.1:{port}"))
        .env("AVEMINT_SESSION_KEYS", "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
        .env("AVEMINT_DATABASE_URL", db)
        .env("AVEMINT_DATABASE_MAX_CONNECTIONS", "8")
        .env("AVEMINT_KEYS_DIR", keys)
        .env("AVEMINT_REFRESH_SKEW", SKEW)
        .env("AVEMINT_AVE_REFRESH_TIMEOUT", "5")
        .env("AVEMINT_AVE_TOKEN_BUDGET", "1000")
        .env("AVEMINT_LOGIN_RATE_LIMIT", "0")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(Instance { base, child })
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> Result<(), Error> {
    for _ in 0..600 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{base} did not become ready").into())
}

/// (RSS in KiB, open file descriptors) of a process.
fn proc_sample(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    /// Answers other than 200, 401 or 503 with `Retry-After` (or no answer at all).
    other: u64,
    lost: Vec<usize>,
}

#[derive(Default, Clone)]
struct Series {
    first: u64,
    last: u64,
    max: u64,
}

impl Series {
    fn add(&mut self, v: u64) {
        if self.first == 0 {
            self.first = v;
        }
        self.last = v;
        self.max = self.max.max(v);
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let bin = std::env::var("AVEMINT_BIN").map_err(|_| "AVEMINT_BIN is required")?;
    let base_url = std::env::var("SOAK_DATABASE_URL").map_err(|_| "SOAK_DATABASE_URL (PostgreSQL) is required")?;
    let duration = Duration::from_secs(env_u64("SOAK_DURATION", 600));
    let sessions = env_u64("SOAK_SESSIONS", 40) as usize;
    let instances_n = env_u64("SOAK_INSTANCES", 2).max(1) as usize;
    let fault_secs = Duration::from_secs(env_u64("SOAK_FAULT_SECS", 15));
    let trial = faults_from_env()?;
    let series_out = std::env::var("SOAK_SERIES").ok();
    let scrape_every = Duration::from_secs(env_u64("SOAK_SCRAPE_SECS", 15).max(1));

    // A scratch schema; every connection of the instances is tagged for pg_stat_activity.
    let admin = sqlx::PgPool::connect(&base_url).await?;
    let schema = format!("avemint_soak_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
        .execute(&admin)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await?;
    let sep = if base_url.contains('?') { '&' } else { '?' };
    let db = format!("{base_url}{sep}application_name={APP_NAME}&options=-c%20search_path%3D{schema}");

    let emulator = Emulator::start(EmulatorConfig {
        access_token_ttl: Duration::from_secs(ACCESS_TTL),
        token_rate_limit_per_minute: 1_000_000,
        users: (0..sessions)
            .map(|i| EmulatedUser {
                id: format!("00000000-0000-4000-8000-{i:012}"),
                display_name: format!("User {i}"),
                handle: format!("user{i}"),
                email: Some(format!("user{i}@example.com")),
                avatar_url: None,
            })
            .collect(),
        ..EmulatorConfig::default()
    })
    .await?;
    let proxy = FaultProxy::start(&emulator.base_url()).await;
    emulator.set_advertised_base_url(Some(proxy.url()));
    let keys = tempfile::tempdir()?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut instances = Vec::new();
    for _ in 0..instances_n {
        let instance = start_instance(&bin, &emulator, &db, keys.path())?;
        wait_ready(&http, &instance.base).await?;
        instances.push(instance);
    }
    emulator.set_redirect_uris(instances.iter().map(|i| format!("{}/auth/callback", i.base)).collect());
    let bases: Vec<String> = instances.iter().map(|i| i.base.clone()).collect();
    let mut jars = Vec::new();
    for (i, user) in emulator.users().to_vec().iter().enumerate() {
        jars.push(sign_in(&http, &emulator, &bases[i % bases.len()], &user.id).await?);
    }
    println!(
        "soak: {} s, {sessions} sessions on {instances_n} instances (PostgreSQL), Ave access tokens {ACCESS_TTL} s, \
         refresh skew {SKEW} s, a {}-s fault every minute",
        duration.as_secs(),
        fault_secs.as_secs()
    );

    let started = Instant::now();
    let until = started + duration;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let drivers: Vec<_> = jars
        .into_iter()
        .enumerate()
        .map(|(i, jar)| {
            let (http, bases, tally) = (http.clone(), bases.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = i;
                let mut last = 0u16;
                while Instant::now() < until {
                    let base = &bases[n % bases.len()];
                    n += 1;
                    let mut jar = jar.clone();
                    let answer = jar
                        .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
                        .await
                        .map(|resp| (resp.status().as_u16(), resp.headers().contains_key("retry-after")))
                        .map_err(|_| ());
                    let ended = {
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        match answer {
                            Ok((status, retry_after)) => {
                                *t.by_status.entry(status).or_insert(0) += 1;
                                last = status;
                                if status == 401 {
                                    t.lost.push(i);
                                }
                                if !(status == 200 || status == 401 || (status == 503 && retry_after)) {
                                    t.other += 1;
                                }
                                status == 401
                            }
                            Err(()) => {
                                t.other += 1;
                                false
                            }
                        }
                    };
                    if ended {
                        return (jar, last);
                    }
                    tokio::time::sleep(REQUEST_EVERY).await;
                }
                (jar, last)
            })
        })
        .collect();

    // Faults: 20 s into every minute, the next fault of the trial for `fault_secs`.
    let faults = {
        let (proxy_ref, emulator) = (&proxy, emulator.clone());
        async move {
            let mut minute = 0u64;
            let mut log = Vec::new();
            while !trial.is_empty() {
                let at = started + Duration::from_secs(minute * 60 + 20);
                if at + fault_secs > until {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                let fault = trial[(minute as usize) % trial.len()];
                apply(Some(fault), proxy_ref, &emulator).await;
                tokio::time::sleep(fault_secs).await;
                apply(None, proxy_ref, &emulator).await;
                log.push(fault);
                minute += 1;
            }
            log
        }
    };

    let sampler = async {
        let mut rss = vec![Series::default(); instances.len()];
        let mut fds = vec![Series::default(); instances.len()];
        let mut pool = Series::default();
        let mut pool_active = Series::default();
        while Instant::now() < until {
            for (i, instance) in instances.iter().enumerate() {
                let (r, f) = proc_sample(instance.child.id());
                rss[i].add(r);
                fds[i].add(f as u64);
            }
            let counts: Vec<(String, i64)> = sqlx::query_as(
                "SELECT COALESCE(state, ''), count(*) FROM pg_stat_activity WHERE application_name = $1 GROUP BY 1",
            )
            .bind(APP_NAME)
            .fetch_all(&admin)
            .await
            .unwrap_or_default();
            pool.add(counts.iter().map(|(_, n)| *n as u64).sum());
            pool_active.add(counts.iter().filter(|(s, _)| s != "idle").map(|(_, n)| *n as u64).sum());
            tokio::time::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
        }
        (rss, fds, pool, pool_active)
    };
    // Prometheus' view: every instance's /metrics every `scrape_every`, from the first request to the end.
    let scraper = async {
        let mut recording = Recording::default();
        if series_out.is_none() {
            return recording;
        }
        let mut tick = tokio::time::interval_at(started.into(), scrape_every);
        while Instant::now() < until {
            tick.tick().await;
            recording.scrapes += 1;
            for (i, base) in bases.iter().enumerate() {
                if let Ok(resp) = http.get(format!("{base}/metrics")).send().await
                    && let Ok(text) = resp.text().await
                {
                    recording.add(i, &text);
                }
            }
        }
        recording
    };
    let (fault_log, (rss, fds, pool, pool_active), recording) = tokio::join!(faults, sampler, scraper);
    if let Some(path) = &series_out {
        std::fs::write(path, recording.input_series())?;
        println!(
            "soak: {} scrapes every {} s of {} series written to {path}",
            recording.scrapes,
            scrape_every.as_secs(),
            recording.series.len()
        );
    }
    let mut ends = Vec::new();
    for d in drivers {
        ends.push(d.await?);
    }
    apply(None, &proxy, &emulator).await;

    // Every session still signed in must be served once the last fault has healed.
    let mut unrecovered = 0;
    for (i, (jar, last)) in ends.iter().enumerate() {
        if *last == 401 || *last == 200 {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut ok = false;
        while Instant::now() < deadline {
            let mut jar = jar.clone();
            let base = &bases[i % bases.len()];
            if let Ok(resp) = jar
                .send(http.post(format!("{base}/auth/token")).header("X-CSRF", "1"))
                .await
            {
                if resp.status() == 200 {
                    ok = true;
                    break;
                }
                if resp.status() == 401 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if !ok {
            unrecovered += 1;
        }
    }

    {
        let t = tally.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = started.elapsed();
        println!();
        println!("| figure | value |");
        println!("|---|---|");
        println!("| duration | {:.0} s |", elapsed.as_secs_f64());
        println!("| faults injected | {} ({:?}) |", fault_log.len(), fault_log);
        println!("| sessions | {sessions} on {instances_n} instances |");
        println!("| sessions lost (401) | {} |", t.lost.len());
        println!("| sessions not served again 30 s after the last fault | {unrecovered} |");
        println!("| answers by status | {:?} |", t.by_status);
        println!("| other answers (not 200 / 503 with Retry-After / 401) | {} |", t.other);
        println!("| Ave refreshes answered 200 | {} |", emulator.successful_refreshes());
        println!(
            "| refresh token presented twice at the same time | {} |",
            emulator.concurrent_refresh_presentations()
        );
        println!("| refresh families revoked | {} |", emulator.refresh_families_revoked());
        for (i, (r, f)) in rss.iter().zip(fds.iter()).enumerate() {
            println!(
                "| instance {i} RSS first / last / max | {} / {} / {} MiB |",
                r.first / 1024,
                r.last / 1024,
                r.max / 1024
            );
            println!(
                "| instance {i} open fds first / last / max | {} / {} / {} |",
                f.first, f.last, f.max
            );
        }
        println!(
            "| store connections (all instances) first / last / max | {} / {} / {} |",
            pool.first, pool.last, pool.max
        );
        println!("| store connections busy, max seen | {} |", pool_active.max);
    }

    drop(instances);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
        .execute(&admin)
        .await?;
    Ok(())
}
