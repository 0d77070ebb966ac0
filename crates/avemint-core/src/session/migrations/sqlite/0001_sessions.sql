-- Sessions: one row per signed-in browser. Tokens and profile live only inside
-- `sealed` (AES-256-GCM, the row key as associated data).
CREATE TABLE sessions (
    key_hash          BLOB    PRIMARY KEY NOT NULL, -- SHA-256 of the cookie's session id
    version           INTEGER NOT NULL,             -- bumped on every token swap (compare-and-swap)
    sealed            BLOB    NOT NULL,
    created_at        INTEGER NOT NULL,             -- unix seconds
    last_seen_at      INTEGER NOT NULL,
    access_expires_at INTEGER NOT NULL              -- when Ave's access token expires
) WITHOUT ROWID;
CREATE INDEX sessions_created_at ON sessions (created_at);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);

-- `state` values of completed logins, so a callback cannot be replayed.
CREATE TABLE used_login_states (
    state_hash BLOB    PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX used_login_states_expires_at ON used_login_states (expires_at);
