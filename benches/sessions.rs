//! What listing a user's sessions costs as the store grows (issue 16): one user's 10 sessions, listed through
//! the per-user index, among 100 and among 100,000 stored sessions, on SQLite and (with
//! `AVEMINT_TEST_DATABASE_URL`) PostgreSQL; and the admin API's counting query over 100,000 sessions.
//!
//! The index makes a listing independent of the total: compare the two `list_of` figures of a backend. Each
//! listing opens (decrypts) the user's rows, so its cost is mostly that user's session count. The other
//! users' rows are bulk-inserted filler (random keys, index values and bytes), never opened.
//! Smoke mode for CI: `cargo bench --bench sessions -- --test`.

use std::hint::black_box;
use std::time::Duration;

use avemint_base::clock::{ManualClock, UnixTime};
use avemint_base::secret::Secret;
use avemint_core::session::{
    AveTokens, DatabaseUrl, SealingKeys, SessionData, SessionHandle, SessionSettings, Sessions,
};
use criterion::{Criterion, criterion_group, criterion_main};

const NOW: i64 = 1_790_000_000;
const SUB: &str = "6f9619ff-8b86-d011-b42d-00cf4fc964ff";
const OWN: usize = 10;

fn data() -> SessionData {
    SessionData {
        sid: SessionHandle::generate(),
        sub: SUB.into(),
        scope: "openid profile email offline_access".into(),
        tokens: AveTokens {
            access_token: Secret::new("at_".repeat(20)),
            access_token_jwt: Some(Secret::new("eyJhbGciOiJSUzI1NiJ9.".repeat(35))),
            id_token: Secret::new("eyJhbGciOiJSUzI1NiJ9.".repeat(40)),
            refresh_token: Some(Secret::new("rt_".repeat(20))),
            access_expires_at: UnixTime::from_secs(NOW + 3600),
        },
        id_token_claims: Default::default(),
        user: None,
        signed_in_from: Default::default(),
    }
}

/// SQLite: `n` filler rows in one statement.
const SQLITE_FILLER: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1) \
     INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, access_expires_at, owner_hash, \
     seen_mac, handle_hash) \
     SELECT randomblob(32), 0, randomblob(1500), $2, $2, $2 + 3600, randomblob(32), randomblob(32), randomblob(32) \
     FROM n";

/// PostgreSQL: the same.
const POSTGRES_FILLER: &str = "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, \
     access_expires_at, owner_hash, seen_mac, handle_hash) \
     SELECT r, 0, decode(repeat(md5(random()::text), 94), 'hex'), $2, $2, $2 + 3600, r, r, r \
     FROM (SELECT decode(md5(random()::text) || md5(random()::text), 'hex') AS r FROM generate_series(1, $1)) g";

/// A store at `url` with this user's `OWN` sessions and `total - OWN` other rows.
async fn store_with(url: &DatabaseUrl, raw_url: &str, total: usize) -> Sessions {
    let clock = ManualClock::new(UnixTime::from_secs(NOW)).clock();
    let settings = SessionSettings {
        max_sessions_per_user: 0,
        ..SessionSettings::default()
    };
    let keys = SealingKeys::from_keys(vec![[42; 32]]);
    let sessions = Sessions::open(url, &keys, settings, Duration::ZERO, clock)
        .await
        .expect("store");
    for _ in 0..OWN {
        sessions.create(&data()).await.expect("create");
    }
    let filler = i64::try_from(total - OWN).expect("count");
    match url {
        DatabaseUrl::Sqlite(_) => {
            let pool = sqlx::SqlitePool::connect(raw_url).await.expect("connect");
            sqlx::query(SQLITE_FILLER)
                .bind(filler)
                .bind(NOW)
                .execute(&pool)
                .await
                .expect("filler");
            pool.close().await;
        }
        DatabaseUrl::Postgres(_) => {
            let pool = sqlx::PgPool::connect(raw_url).await.expect("connect");
            sqlx::query(POSTGRES_FILLER)
                .bind(filler)
                .bind(NOW)
                .execute(&pool)
                .await
                .expect("filler");
            sqlx::query("ANALYZE sessions").execute(&pool).await.expect("analyze");
            pool.close().await;
        }
    }
    sessions
}

/// A fresh PostgreSQL schema under `AVEMINT_TEST_DATABASE_URL`, if set.
async fn postgres_schema(name: &str) -> Option<String> {
    let base = std::env::var("AVEMINT_TEST_DATABASE_URL").ok()?;
    let pool = sqlx::PgPool::connect(&base).await.expect("PostgreSQL");
    let schema = schema_name(name);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
        .execute(&pool)
        .await
        .expect("drop");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&pool)
        .await
        .expect("schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-c%20search_path%3D{schema}"))
}

fn listing(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    for total in [100, 100_000] {
        let mut backends = vec![(
            "sqlite",
            format!("sqlite://{}", dir.path().join(format!("s{total}.db")).display()),
        )];
        if let Some(url) = rt.block_on(postgres_schema(&format!("s{total}"))) {
            backends.push(("postgres", url));
        }
        for (name, raw) in backends {
            let url = DatabaseUrl::parse(&raw).expect("url");
            let started = std::time::Instant::now();
            let sessions = rt.block_on(store_with(&url, &raw, total));
            eprintln!("{name}: {total} sessions stored in {:?}", started.elapsed());
            let listed = rt.block_on(sessions.list_of(SUB)).expect("list");
            assert_eq!(listed.len(), OWN, "the user's sessions, and only those");
            c.bench_function(&format!("{name}/list_of one user's {OWN} among {total}"), |b| {
                b.iter(|| rt.block_on(sessions.list_of(black_box(SUB))).expect("list"))
            });
            let counts = rt.block_on(sessions.counts()).expect("counts");
            assert_eq!(counts.total, total as u64);
            c.bench_function(&format!("{name}/counts over {total}"), |b| {
                b.iter(|| rt.block_on(sessions.counts()).expect("counts"))
            });
        }
    }
    if let Ok(base) = std::env::var("AVEMINT_TEST_DATABASE_URL") {
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&base).await.expect("PostgreSQL");
            for total in [100, 100_000] {
                let schema = schema_name(&format!("s{total}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
                    .execute(&pool)
                    .await
                    .expect("drop");
            }
        });
    }
}

fn schema_name(name: &str) -> String {
    format!("avemint_bench_{name}_{}", std::process::id())
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = listing
}
criterion_main!(benches);
