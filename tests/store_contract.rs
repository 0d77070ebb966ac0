//! The session store contract, run against both backends: every test below is
//! instantiated by `support::on_both_stores!` once over SQLite (a file in a
//! temp dir) and once over PostgreSQL (a fresh schema per test under
//! `AVEMINT_TEST_DATABASE_URL`; skipped with a message without it, except
//! under `CI=true`, where it fails).
//! Only the public `SessionStore` API is exercised; the database is edited
//! directly only to stage corrupt rows and failures.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use avemint_base::clock::UnixTime;
use avemint_core::session::DatabaseUrl;
use avemint_core::session::postgres::PostgresStore;
use avemint_core::session::sqlite::SqliteStore;
use avemint_core::session::{
    CountCutoffs, HandleHash, OwnerHash, SessionCounts, SessionRowHash, SessionStore, StoreError, StoredSession,
    SweepCutoffs,
};
use sqlx::Row;

/// A direct connection to the store's database, to stage what the store API cannot.
enum Admin {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Admin {
    /// Runs one statement written in SQL both databases accept.
    async fn exec(&self, sql: &'static str) -> u64 {
        match self {
            Self::Sqlite(p) => sqlx::query(sql).execute(p).await.expect(sql).rows_affected(),
            Self::Postgres(p) => sqlx::query(sql).execute(p).await.expect(sql).rows_affected(),
        }
    }
}

/// One backend under test.
struct Backend {
    store: Arc<dyn SessionStore>,
    url: String,
    admin: Admin,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// The backend `support::on_both_stores!` picked: SQLite for `None`, else that PostgreSQL schema.
    async fn open(db: Option<DatabaseUrl>) -> Self {
        match db {
            None => Self::sqlite().await,
            Some(db) => Self::postgres(&db).await,
        }
    }

    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("contract.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.expect("connect"));
        let admin = Admin::Sqlite(sqlx::SqlitePool::connect(&url).await.expect("admin connect"));
        Self {
            store,
            url,
            admin,
            _dir: Some(dir),
        }
    }

    async fn postgres(db: &DatabaseUrl) -> Self {
        let url = support::database_url_string(db);
        let store = Arc::new(PostgresStore::connect(&url).await.expect("connect"));
        let admin = Admin::Postgres(sqlx::PgPool::connect(&url).await.expect("admin connect"));
        Self {
            store,
            url,
            admin,
            _dir: None,
        }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self.admin, Admin::Sqlite(_))
    }

    /// Opens the same database again (running the migrations again).
    async fn reopen(&self) -> Result<Arc<dyn SessionStore>, StoreError> {
        Ok(match DatabaseUrl::parse(&self.url).expect("url") {
            DatabaseUrl::Sqlite(u) => Arc::new(SqliteStore::connect(&u).await?),
            DatabaseUrl::Postgres(u) => Arc::new(PostgresStore::connect(u.expose()).await?),
        })
    }

    /// A database of this kind that cannot be opened.
    async fn open_unreachable(&self) -> Result<Arc<dyn SessionStore>, StoreError> {
        Ok(if self.is_sqlite() {
            Arc::new(SqliteStore::connect("sqlite:///nonexistent-avemint-dir/contract.db").await?)
        } else {
            Arc::new(PostgresStore::connect("postgres://postgres@127.0.0.1:1/test").await?)
        })
    }
}

support::on_both_stores!(
    Backend::open =>
    insert_get_delete_and_login_states,
    replace_is_compare_and_swap_on_version,
    the_refresh_marker_admits_one_holder_until_it_is_stale,
    touch_moves_last_seen_forward_with_its_mac,
    sweep_removes_expired_sessions_and_used_states,
    the_per_user_index_lists_and_trims_most_recently_used_first,
    unreadable_rows_are_corrupt_and_do_not_hide_others,
    a_failing_database_is_unavailable,
    an_unknown_migration_history_is_a_migration_error,
    reopening_keeps_the_rows,
    the_sid_index_finds_one_session,
    counts_are_of_live_sessions,
    the_ave_pause_is_shared_and_only_lengthened,
);

fn t(secs: i64) -> UnixTime {
    UnixTime::from_secs(secs)
}

fn key(k: u8) -> SessionRowHash {
    SessionRowHash::from_bytes([k; 32])
}

fn row(k: u8, version: i64, now: i64) -> StoredSession {
    StoredSession {
        key: key(k),
        version,
        sealed: vec![k; 40],
        created_at: t(now),
        last_seen_at: t(now),
        access_expires_at: t(now + 3600),
        refresh_started_at: None,
        refresh_deadline: None,
        owner: Some(OwnerHash::from_bytes([k % 2; 32])),
        seen_mac: Some(vec![k; 32]),
        handle: Some(HandleHash::from_bytes([k; 32])),
    }
}

async fn get(s: &Backend, k: u8) -> StoredSession {
    s.store.get(&key(k)).await.expect("get").expect("row")
}

async fn insert_get_delete_and_login_states(b: Backend) {
    let s = &b.store;
    s.ping().await.expect("ping");
    assert_eq!(s.get(&key(1)).await.expect("get"), None);
    let r = row(1, 0, 1000);
    s.insert(&r).await.expect("insert");
    assert_eq!(s.get(&r.key).await.expect("get"), Some(r.clone()), "round trip");
    // A row without the index or the MAC (written by an older version) reads back as such.
    let mut old = row(2, 3, 900);
    old.owner = None;
    old.seen_mac = None;
    s.insert(&old).await.expect("insert");
    assert_eq!(s.get(&old.key).await.expect("get"), Some(old.clone()));
    assert!(
        matches!(s.insert(&r).await, Err(StoreError::Unavailable(_))),
        "a duplicate key is refused"
    );
    assert_eq!(get(&b, 1).await, r, "the refused insert changed nothing");
    assert!(s.delete(&r.key).await.expect("delete"));
    assert!(!s.delete(&r.key).await.expect("delete"), "deleted once");
    assert_eq!(s.get(&r.key).await.expect("get"), None);
    assert!(s.get(&old.key).await.expect("get").is_some(), "other rows stay");
    assert!(s.consume_login_state(&[9; 32], t(100)).await.expect("state"));
    assert!(
        !s.consume_login_state(&[9; 32], t(100)).await.expect("state"),
        "used once"
    );
    assert!(s.consume_login_state(&[8; 32], t(100)).await.expect("state"));
}

async fn replace_is_compare_and_swap_on_version(b: Backend) {
    let s = &b.store;
    let r = row(1, 0, 1000);
    s.insert(&r).await.expect("insert");
    assert!(s.replace(&r.key, 0, b"new", t(5000)).await.expect("cas"));
    assert!(
        !s.replace(&r.key, 0, b"stale", t(6000)).await.expect("cas"),
        "a stale version loses"
    );
    let got = get(&b, 1).await;
    assert_eq!(
        (got.version, got.sealed.as_slice(), got.access_expires_at),
        (1, b"new".as_slice(), t(5000))
    );
    assert_eq!(
        (got.created_at, got.last_seen_at, got.owner, got.seen_mac),
        (r.created_at, r.last_seen_at, r.owner, r.seen_mac),
        "replace changes only the data"
    );
    assert!(
        !s.replace(&key(7), 0, b"x", t(1)).await.expect("cas"),
        "a missing row is not replaced"
    );
    assert_eq!(s.get(&key(7)).await.expect("get"), None, "nor created");
}

async fn the_refresh_marker_admits_one_holder_until_it_is_stale(b: Backend) {
    let s = &b.store;
    let r = row(1, 1, 1000);
    s.insert(&r).await.expect("insert");
    assert!(
        !s.begin_refresh(&r.key, 0, t(1500), t(1560), t(1400))
            .await
            .expect("marker"),
        "the marker needs the current version"
    );
    assert!(
        !s.begin_refresh(&key(7), 1, t(1500), t(1560), t(1400))
            .await
            .expect("marker"),
        "no marker on a missing row"
    );
    assert!(
        s.begin_refresh(&r.key, 1, t(1500), t(1560), t(1400))
            .await
            .expect("marker")
    );
    assert_eq!(get(&b, 1).await.refresh_started_at, Some(t(1500)));
    assert!(
        !s.begin_refresh(&r.key, 1, t(1501), t(1561), t(1401))
            .await
            .expect("marker"),
        "one marker holder"
    );
    assert!(
        !s.begin_refresh(&r.key, 1, t(1510), t(1570), t(1500))
            .await
            .expect("marker"),
        "a marker before its deadline is held"
    );
    assert!(
        !s.begin_refresh(&r.key, 1, t(1560), t(1620), t(1550))
            .await
            .expect("marker"),
        "a marker exactly at its deadline is held, whatever the caller's idea of staleness"
    );
    assert_eq!(
        get(&b, 1).await.refresh_deadline,
        Some(t(1560)),
        "the deadline is recorded"
    );
    s.abort_refresh(&r.key, 1, t(1499))
        .await
        .expect("abort of another holder's marker");
    s.abort_refresh(&r.key, 0, t(1500))
        .await
        .expect("abort on another version");
    assert_eq!(
        get(&b, 1).await.refresh_started_at,
        Some(t(1500)),
        "only the holder's own marker on its version is cleared"
    );
    assert!(
        s.begin_refresh(&r.key, 1, t(1600), t(1660), t(1501))
            .await
            .expect("marker"),
        "a marker past its deadline (a dead holder) is taken over"
    );
    assert_eq!(get(&b, 1).await.refresh_started_at, Some(t(1600)));
    s.abort_refresh(&r.key, 1, t(1500))
        .await
        .expect("abort by the dead holder");
    assert_eq!(
        get(&b, 1).await.refresh_started_at,
        Some(t(1600)),
        "the holder that was taken over cannot clear the new marker"
    );
    s.abort_refresh(&r.key, 1, t(1600)).await.expect("abort");
    let got = get(&b, 1).await;
    assert_eq!(
        (got.refresh_started_at, got.version, got.sealed),
        (None, 1, r.sealed.clone()),
        "abort clears the marker and keeps the data"
    );
    // A marker written by an older avemint, without a deadline: taken over by its age, as then.
    assert!(
        s.begin_refresh(&r.key, 1, t(1601), t(1661), t(1501))
            .await
            .expect("marker")
    );
    assert_eq!(
        b.admin.exec("UPDATE sessions SET refresh_deadline = NULL").await,
        1,
        "one row"
    );
    assert!(
        !s.begin_refresh(&r.key, 1, t(1650), t(1710), t(1601))
            .await
            .expect("marker"),
        "a legacy marker at the cut-off is held"
    );
    assert!(
        s.begin_refresh(&r.key, 1, t(1650), t(1710), t(1602))
            .await
            .expect("marker"),
        "a legacy marker older than the cut-off is taken over"
    );
    assert_eq!(get(&b, 1).await.refresh_deadline, Some(t(1710)), "with a deadline now");
    s.abort_refresh(&r.key, 1, t(1650)).await.expect("abort");
    assert_eq!(get(&b, 1).await.refresh_deadline, None, "abort clears the deadline too");
    assert!(
        s.begin_refresh(&r.key, 1, t(1602), t(1662), t(1502))
            .await
            .expect("marker")
    );
    assert!(s.replace(&r.key, 1, b"newer", t(7000)).await.expect("cas"));
    let got = get(&b, 1).await;
    assert_eq!(
        (got.refresh_started_at, got.version),
        (None, 2),
        "replace clears the marker"
    );
    assert!(
        s.begin_refresh(&r.key, 2, t(1700), t(1760), t(1000))
            .await
            .expect("marker"),
        "the next refresh can start"
    );
}

async fn the_ave_pause_is_shared_and_only_lengthened(b: Backend) {
    let s = &b.store;
    assert_eq!(s.ave_pause().await.expect("read"), None, "never recorded");
    s.share_ave_pause(t(1030)).await.expect("share");
    assert_eq!(s.ave_pause().await.expect("read"), Some(t(1030)));
    s.share_ave_pause(t(1010)).await.expect("share");
    assert_eq!(
        s.ave_pause().await.expect("read"),
        Some(t(1030)),
        "a shorter pause keeps the longer one"
    );
    s.share_ave_pause(t(1060)).await.expect("share");
    assert_eq!(
        s.ave_pause().await.expect("read"),
        Some(t(1060)),
        "a longer one replaces it"
    );
}

async fn touch_moves_last_seen_forward_with_its_mac(b: Backend) {
    let s = &b.store;
    let r = row(1, 0, 1000);
    s.insert(&r).await.expect("insert");
    s.touch(&r.key, t(2000), b"mac").await.expect("touch");
    let got = get(&b, 1).await;
    assert_eq!(
        (got.last_seen_at, got.seen_mac.as_deref()),
        (t(2000), Some(b"mac".as_slice()))
    );
    assert_eq!(
        (got.created_at, got.version),
        (t(1000), 0),
        "touch changes only activity"
    );
    s.touch(&r.key, t(1500), b"older").await.expect("touch");
    s.touch(&r.key, t(2000), b"same").await.expect("touch");
    let got = get(&b, 1).await;
    assert_eq!(
        (got.last_seen_at, got.seen_mac.as_deref()),
        (t(2000), Some(b"mac".as_slice())),
        "never moved back, nor re-MACed at the same time"
    );
    s.touch(&key(7), t(3000), b"mac").await.expect("touch of a missing row");
    assert_eq!(s.get(&key(7)).await.expect("get"), None);
}

async fn sweep_removes_expired_sessions_and_used_states(b: Backend) {
    let s = &b.store;
    let mut fresh = row(1, 0, 1000);
    fresh.created_at = t(600);
    s.insert(&fresh).await.expect("insert");
    let mut born_early = row(2, 0, 1000);
    born_early.created_at = t(499);
    s.insert(&born_early).await.expect("insert");
    let mut idle = row(3, 0, 1000);
    idle.created_at = t(600);
    idle.last_seen_at = t(799);
    s.insert(&idle).await.expect("insert");
    let mut at_cutoffs = row(4, 0, 1000);
    at_cutoffs.created_at = t(500);
    at_cutoffs.last_seen_at = t(800);
    s.insert(&at_cutoffs).await.expect("insert");
    assert!(s.consume_login_state(&[1; 32], t(2999)).await.expect("state"));
    assert!(s.consume_login_state(&[2; 32], t(3000)).await.expect("state"));
    let cutoffs = SweepCutoffs {
        now: t(3000),
        created_before: t(500),
        seen_before: t(800),
    };
    let removed = s.sweep(cutoffs).await.expect("sweep");
    assert_eq!(removed, 2, "past the lifetime and past the idle timeout");
    for (k, kept) in [(1, true), (2, false), (3, false), (4, true)] {
        assert_eq!(s.get(&key(k)).await.expect("get").is_some(), kept, "row {k}");
    }
    assert!(
        s.consume_login_state(&[1; 32], t(5000)).await.expect("state"),
        "an expired used state is forgotten"
    );
    assert!(
        !s.consume_login_state(&[2; 32], t(5000)).await.expect("state"),
        "a state expiring now is still remembered"
    );
    let removed = s.sweep(cutoffs).await.expect("sweep");
    assert_eq!(removed, 0, "nothing more to sweep");
}

async fn the_per_user_index_lists_and_trims_most_recently_used_first(b: Backend) {
    let s = &b.store;
    let alice = [OwnerHash::from_bytes([7; 32]), OwnerHash::from_bytes([8; 32])];
    let mut rows = Vec::new();
    for (i, seen) in [(10u8, 100), (11, 400), (12, 300), (13, 200)] {
        let mut r = row(i, 0, 50);
        r.last_seen_at = t(seen);
        r.owner = Some(alice[usize::from(i % 2)]);
        s.insert(&r).await.expect("insert");
        rows.push(r);
    }
    // Same last use as 13: the later created comes first.
    let mut tie = row(14, 0, 60);
    tie.last_seen_at = t(200);
    tie.owner = Some(alice[0]);
    s.insert(&tie).await.expect("insert");
    let mut bob = row(20, 0, 50);
    bob.owner = Some(OwnerHash::from_bytes([9; 32]));
    s.insert(&bob).await.expect("insert");
    let mut unindexed = row(21, 0, 50);
    unindexed.owner = None;
    s.insert(&unindexed).await.expect("insert");
    let firsts = |rows: Vec<StoredSession>| rows.iter().map(|r| r.key.as_bytes()[0]).collect::<Vec<u8>>();
    let listed = s.sessions_of(&alice).await.expect("list");
    assert_eq!(
        listed.iter().find(|r| r.key == rows[1].key),
        Some(&rows[1]),
        "rows are listed whole"
    );
    assert_eq!(
        firsts(listed),
        vec![11, 12, 14, 13, 10],
        "every owner key, most recently used first"
    );
    assert_eq!(
        firsts(s.sessions_of(&alice[..1]).await.expect("list")),
        vec![12, 14, 10]
    );
    assert!(s.sessions_of(&[]).await.expect("list").is_empty());
    assert!(
        s.sessions_of(&[OwnerHash::from_bytes([3; 32])])
            .await
            .expect("list")
            .is_empty()
    );
    // Keep two (the new session 10 among them): 11 stays, the others go.
    let mut ended: Vec<u8> = s
        .trim_sessions_of(&alice, 2, &rows[0].key)
        .await
        .expect("trim")
        .iter()
        .map(|k| k.as_bytes()[0])
        .collect();
    ended.sort_unstable();
    assert_eq!(ended, vec![12, 13, 14]);
    assert_eq!(firsts(s.sessions_of(&alice).await.expect("list")), vec![11, 10]);
    assert!(
        s.trim_sessions_of(&alice, 2, &rows[0].key)
            .await
            .expect("trim")
            .is_empty(),
        "nothing beyond the limit"
    );
    // Keep one: only the excepted session, even though it is not the most recent.
    let ended = s.trim_sessions_of(&alice, 1, &rows[0].key).await.expect("trim");
    assert_eq!(ended, vec![rows[1].key]);
    // Keep zero still never ends the excepted session.
    assert!(
        s.trim_sessions_of(&alice, 0, &rows[0].key)
            .await
            .expect("trim")
            .is_empty()
    );
    assert_eq!(firsts(s.sessions_of(&alice).await.expect("list")), vec![10]);
    assert!(
        s.get(&bob.key).await.expect("get").is_some(),
        "other users are untouched"
    );
    assert!(
        s.get(&unindexed.key).await.expect("get").is_some(),
        "unindexed rows are untouched"
    );
    assert!(s.trim_sessions_of(&[], 1, &bob.key).await.expect("trim").is_empty());
}

async fn unreadable_rows_are_corrupt_and_do_not_hide_others(b: Backend) {
    let s = &b.store;
    let owner = OwnerHash::from_bytes([7; 32]);
    for (k, version) in [(1u8, 1), (2, 2), (3, 3)] {
        let mut r = row(k, version, 1000 + i64::from(k));
        r.owner = Some(owner);
        s.insert(&r).await.expect("insert");
    }
    // An owner hash of the wrong length.
    assert_eq!(
        b.admin
            .exec("UPDATE sessions SET owner_hash = sealed WHERE version = 1")
            .await,
        1
    );
    assert!(matches!(s.get(&key(1)).await, Err(StoreError::CorruptRow(_))));
    // A session key of the wrong length, found through the index.
    assert_eq!(
        b.admin
            .exec("UPDATE sessions SET key_hash = sealed WHERE version = 2")
            .await,
        1
    );
    let listed = s.sessions_of(&[owner]).await.expect("list");
    assert_eq!(
        listed.iter().map(|r| r.key).collect::<Vec<_>>(),
        vec![key(3)],
        "one unreadable row does not hide the others"
    );
    if b.is_sqlite() {
        // Only SQLite lets a column hold a value of another type.
        b.admin
            .exec("UPDATE sessions SET created_at = 'soon' WHERE version = 3")
            .await;
        assert!(matches!(s.get(&key(3)).await, Err(StoreError::CorruptRow(_))));
        assert!(s.sessions_of(&[owner]).await.expect("list").is_empty());
    }
    assert!(s.delete(&key(1)).await.expect("delete"), "a corrupt row can be deleted");
    assert_eq!(s.get(&key(1)).await.expect("get"), None);
}

async fn a_failing_database_is_unavailable(b: Backend) {
    let s = &b.store;
    let r = row(1, 0, 1000);
    s.insert(&r).await.expect("insert");
    b.admin.exec("ALTER TABLE sessions RENAME TO sessions_away").await;
    b.admin
        .exec("ALTER TABLE used_login_states RENAME TO used_login_states_away")
        .await;
    let unavailable = |what: &str, e: Option<StoreError>| {
        assert!(matches!(e, Some(StoreError::Unavailable(_))), "{what}: {e:?}");
    };
    unavailable("insert", s.insert(&row(2, 0, 1000)).await.err());
    unavailable("get", s.get(&r.key).await.err());
    unavailable("replace", s.replace(&r.key, 0, b"x", t(1)).await.err());
    unavailable(
        "begin_refresh",
        s.begin_refresh(&r.key, 0, t(1), t(61), t(0)).await.err(),
    );
    unavailable("abort_refresh", s.abort_refresh(&r.key, 0, t(1)).await.err());
    unavailable("touch", s.touch(&r.key, t(2000), b"mac").await.err());
    unavailable(
        "sessions_of",
        s.sessions_of(&[OwnerHash::from_bytes([1; 32])]).await.err(),
    );
    unavailable(
        "trim_sessions_of",
        s.trim_sessions_of(&[OwnerHash::from_bytes([1; 32])], 1, &r.key)
            .await
            .err(),
    );
    unavailable("delete", s.delete(&r.key).await.err());
    unavailable("consume_login_state", s.consume_login_state(&[1; 32], t(1)).await.err());
    let cutoffs = SweepCutoffs {
        now: t(1),
        created_before: t(0),
        seen_before: t(0),
    };
    unavailable("sweep", s.sweep(cutoffs).await.err());
    b.admin.exec("ALTER TABLE sessions_away RENAME TO sessions").await;
    b.admin
        .exec("ALTER TABLE used_login_states_away RENAME TO used_login_states")
        .await;
    assert_eq!(get(&b, 1).await, r, "nothing was lost once the database is back");
    unavailable("connect", b.open_unreachable().await.err());
}

async fn an_unknown_migration_history_is_a_migration_error(b: Backend) {
    // A database migrated by a version this build does not know.
    assert_eq!(
        b.admin
            .exec("UPDATE _sqlx_migrations SET version = 99999 WHERE version = 1")
            .await,
        1
    );
    assert!(matches!(b.reopen().await.err(), Some(StoreError::Migration(_))));
}

async fn reopening_keeps_the_rows(b: Backend) {
    let r = row(1, 0, 1000);
    b.store.insert(&r).await.expect("insert");
    let again = b.reopen().await.expect("migrations run again");
    assert_eq!(again.get(&r.key).await.expect("get"), Some(r));
}

/// The column of a table as both databases describe it: name, kind, nullable.
type Column = (String, &'static str, bool);

async fn sqlite_columns(pool: &sqlx::SqlitePool, table: &str) -> Vec<Column> {
    sqlx::query(r#"SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid"#)
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("table info")
        .iter()
        .map(|r| {
            let kind = match r.get::<String, _>("type").as_str() {
                "BLOB" => "bytes",
                "INTEGER" => "integer",
                other => panic!("unmapped SQLite type {other}"),
            };
            let not_null = r.get::<i64, _>("notnull") == 1 || r.get::<i64, _>("pk") > 0;
            (r.get::<String, _>("name"), kind, !not_null)
        })
        .collect()
}

async fn postgres_columns(pool: &sqlx::PgPool, table: &str) -> Vec<Column> {
    sqlx::query(
        "SELECT column_name::text AS name, data_type::text AS kind, is_nullable::text AS nullable \
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .expect("columns")
    .iter()
    .map(|r| {
        let kind = match r.get::<String, _>("kind").as_str() {
            "bytea" => "bytes",
            "bigint" => "integer",
            other => panic!("unmapped PostgreSQL type {other}"),
        };
        (
            r.get::<String, _>("name"),
            kind,
            r.get::<String, _>("nullable") == "YES",
        )
    })
    .collect()
}

/// Both migration histories end in the same tables, columns and indexes.
#[tokio::test]
async fn both_migration_histories_end_in_the_same_schema() {
    let lite = Backend::sqlite().await;
    let Some(db) = support::postgres_schema("store_contract::both_migration_histories_end_in_the_same_schema").await
    else {
        return;
    };
    let pg = Backend::postgres(&db).await;
    let (Admin::Sqlite(lite_pool), Admin::Postgres(pg_pool)) = (&lite.admin, &pg.admin) else {
        unreachable!("one of each")
    };
    let lite_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(lite_pool)
    .await
    .expect("tables")
    .into_iter()
    .collect();
    let pg_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(pg_pool)
    .await
    .expect("tables")
    .into_iter()
    .collect();
    assert_eq!(
        lite_tables,
        BTreeSet::from([
            "ave_pause".to_owned(),
            "sessions".to_owned(),
            "used_login_states".to_owned()
        ])
    );
    assert_eq!(lite_tables, pg_tables);
    for table in &lite_tables {
        let lite_cols = sqlite_columns(lite_pool, table).await;
        assert!(!lite_cols.is_empty(), "{table} has columns");
        assert_eq!(lite_cols, postgres_columns(pg_pool, table).await, "columns of {table}");
        let lite_indexes: BTreeSet<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND name NOT LIKE 'sqlite_autoindex%'",
        )
        .bind(table)
        .fetch_all(lite_pool)
        .await
        .expect("indexes")
        .into_iter()
        .collect();
        let pg_indexes: BTreeSet<String> = sqlx::query_scalar(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 \
             AND indexname NOT LIKE '%\\_pkey'",
        )
        .bind(table)
        .fetch_all(pg_pool)
        .await
        .expect("indexes")
        .into_iter()
        .collect();
        assert_eq!(lite_indexes, pg_indexes, "indexes of {table}");
    }
}

async fn the_sid_index_finds_one_session(b: Backend) {
    let s = &b.store;
    s.insert(&row(1, 0, 100)).await.expect("insert");
    s.insert(&row(2, 0, 100)).await.expect("insert");
    let mut unindexed = row(3, 0, 100);
    unindexed.handle = None;
    s.insert(&unindexed).await.expect("insert");
    assert_eq!(
        s.session_by_handle(&[HandleHash::from_bytes([2; 32])])
            .await
            .expect("find"),
        Some(get(&b, 2).await),
        "the row, whole"
    );
    // Every configured key's index value is tried (key rotation).
    let found = s
        .session_by_handle(&[HandleHash::from_bytes([9; 32]), HandleHash::from_bytes([1; 32])])
        .await
        .expect("find")
        .expect("row");
    assert_eq!(found.key, key(1));
    assert_eq!(
        s.session_by_handle(&[HandleHash::from_bytes([3; 32])])
            .await
            .expect("find"),
        None
    );
    assert_eq!(s.session_by_handle(&[]).await.expect("find"), None);
    assert_eq!(get(&b, 3).await.handle, None, "rows written before the index have none");
    // The index is unique: a second row with the same value is refused.
    let mut twin = row(4, 0, 100);
    twin.handle = Some(HandleHash::from_bytes([1; 32]));
    assert!(s.insert(&twin).await.is_err());
}

async fn counts_are_of_live_sessions(b: Backend) {
    let s = &b.store;
    let at = |k: u8, created: i64, seen: i64| {
        let mut r = row(k, 0, created);
        r.last_seen_at = t(seen);
        r
    };
    // Now is 100_000: the last hour starts at 96_400, the last day at 13_600.
    for r in [
        at(1, 99_000, 99_500), // created and used in the last hour
        at(2, 50_000, 99_000), // created in the last day, used in the last hour
        at(3, 20_000, 30_000), // created in the last day, not used since
        at(4, 5_000, 97_000),  // created before the last day, used in the last hour
        at(5, 1_000, 2_000),   // expired: last seen before the idle cut-off
        at(6, 100, 99_900),    // expired: created before the lifetime cut-off
    ] {
        s.insert(&r).await.expect("insert");
    }
    let counts = s
        .counts(CountCutoffs {
            live: SweepCutoffs {
                now: t(100_000),
                created_before: t(1_000),
                seen_before: t(10_000),
            },
            recent_hour: t(96_400),
            recent_day: t(13_600),
        })
        .await
        .expect("counts");
    assert_eq!(
        counts,
        SessionCounts {
            total: 4,
            created_last_hour: 1,
            created_last_day: 3,
            active_last_hour: 3,
        }
    );
}

/// Issue 25 (storage): a database whose migrations stopped before `0006_compact_sessions` (SQLite: `sessions` a
/// `WITHOUT ROWID` table, rebuilt by it) keeps every row, column for column, and the store works on it.
async fn rows_from_before_the_compact_layout_survive_its_migration(db: Option<DatabaseUrl>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, backend) = match &db {
        None => (format!("sqlite://{}", dir.path().join("old.db").display()), "sqlite"),
        Some(db) => (support::database_url_string(db), "postgres"),
    };
    let path = format!(
        "{}/crates/avemint-core/src/session/migrations/{backend}",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(&path))
        .await
        .expect("migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 6)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let rows = [row(1, 0, 1000), row(2, 3, 1001), row(3, 7, 1002)];
    const INSERT: &str = "INSERT INTO sessions (key_hash, version, sealed, created_at, last_seen_at, \
         access_expires_at, owner_hash, seen_mac, handle_hash, refresh_started_at, refresh_deadline) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    macro_rules! stage {
        ($pool:expr) => {{
            let pool = $pool;
            migrator.run(&pool).await.expect("migrations up to 0005");
            for r in &rows {
                sqlx::query(INSERT)
                    .bind(r.key.as_bytes().to_vec())
                    .bind(r.version)
                    .bind(r.sealed.clone())
                    .bind(r.created_at.as_secs())
                    .bind(r.last_seen_at.as_secs())
                    .bind(r.access_expires_at.as_secs())
                    .bind(r.owner.map(|o| o.as_bytes().to_vec()))
                    .bind(r.seen_mac.clone())
                    .bind(r.handle.map(|h| h.as_bytes().to_vec()))
                    .bind(Some(r.created_at.as_secs() + 5))
                    .bind(Some(r.created_at.as_secs() + 65))
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
            pool.close().await;
        }};
    }
    let store: Arc<dyn SessionStore> = match &db {
        None => {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().expect("url");
            stage!(
                sqlx::SqlitePool::connect_with(options.create_if_missing(true))
                    .await
                    .expect("connect")
            );
            Arc::new(SqliteStore::connect(&url).await.expect("the migration runs"))
        }
        Some(_) => {
            stage!(sqlx::PgPool::connect(&url).await.expect("connect"));
            Arc::new(PostgresStore::connect(&url).await.expect("the migration runs"))
        }
    };
    for r in &rows {
        let mut expected = r.clone();
        expected.refresh_started_at = Some(r.created_at + std::time::Duration::from_secs(5));
        expected.refresh_deadline = Some(r.created_at + std::time::Duration::from_secs(65));
        assert_eq!(
            store.get(&r.key).await.expect("get"),
            Some(expected),
            "row {:?} kept",
            r.key
        );
    }
    let handle = rows[1].handle.expect("handle");
    assert_eq!(
        store.session_by_handle(&[handle]).await.expect("by sid").map(|s| s.key),
        Some(rows[1].key),
        "the indexes were rebuilt"
    );
    assert!(store.delete(&rows[0].key).await.expect("delete"));
    assert_eq!(store.get(&rows[0].key).await.expect("get"), None);
}

support::on_both_stores!(rows_from_before_the_compact_layout_survive_its_migration);
