-- Sessions: one row per signed-in browser. Tokens and profile live only inside
-- `sealed` (AES-256-GCM, the row key as associated data).
CREATE TABLE sessions (
    key_hash           BYTEA  PRIMARY KEY,  -- SHA-256 of the cookie's session id
    version            BIGINT NOT NULL,     -- bumped on every token swap (compare-and-swap)
    sealed             BYTEA  NOT NULL,
    created_at         BIGINT NOT NULL,     -- unix seconds
    last_seen_at       BIGINT NOT NULL,
    access_expires_at  BIGINT NOT NULL,     -- when Ave's access token expires
    refresh_started_at BIGINT               -- set while a refresh token is on its way to Ave
);
CREATE INDEX sessions_created_at ON sessions (created_at);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);

-- `state` values of completed logins, so a callback cannot be replayed.
CREATE TABLE used_login_states (
    state_hash BYTEA  PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_login_states_expires_at ON used_login_states (expires_at);
