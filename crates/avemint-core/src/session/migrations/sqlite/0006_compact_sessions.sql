-- `sessions` becomes a rowid table (it was WITHOUT ROWID), rows and columns unchanged. A WITHOUT ROWID table is a
-- B-tree on its random 32-byte key: SQLite keeps a row whole in a page only up to about a quarter of the page
-- (1,002 bytes at 4 KiB) and spills the rest to an overflow page of its own, and inserts at random keys leave
-- pages a quarter empty; every index entry also carries the 32-byte key. In a rowid table rows are appended,
-- stay whole up to nearly a page, and index entries carry the short rowid; the key gets its own unique index.
CREATE TABLE sessions_rowid (
    key_hash           BLOB    PRIMARY KEY NOT NULL, -- SHA-256 of the cookie's session id
    version            INTEGER NOT NULL,             -- bumped on every token swap (compare-and-swap)
    sealed             BLOB    NOT NULL,
    created_at         INTEGER NOT NULL,             -- unix seconds
    last_seen_at       INTEGER NOT NULL,
    access_expires_at  INTEGER NOT NULL,             -- when Ave's access token expires
    refresh_started_at INTEGER,
    owner_hash         BLOB,
    seen_mac           BLOB,
    handle_hash        BLOB,
    refresh_deadline   INTEGER
);
INSERT INTO sessions_rowid (key_hash, version, sealed, created_at, last_seen_at, access_expires_at,
    refresh_started_at, owner_hash, seen_mac, handle_hash, refresh_deadline)
    SELECT key_hash, version, sealed, created_at, last_seen_at, access_expires_at,
    refresh_started_at, owner_hash, seen_mac, handle_hash, refresh_deadline FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_rowid RENAME TO sessions;
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);
CREATE INDEX sessions_owner_hash ON sessions (owner_hash, last_seen_at);
CREATE UNIQUE INDEX sessions_handle_hash ON sessions (handle_hash);
-- `sessions_created_seen` (created_at, last_seen_at) answers everything `sessions_created_at` did (its leading
-- column): that index is not made again.
CREATE INDEX sessions_created_seen ON sessions (created_at, last_seen_at);
