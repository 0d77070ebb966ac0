-- The sid index: HMAC-SHA256 of the session's `sid` (the handle app JWTs
-- carry) under a key derived from the session keys, so a session can be
-- ended by its `sid` alone. NULL for rows written before (found by user only).
ALTER TABLE sessions ADD COLUMN handle_hash BLOB;
CREATE UNIQUE INDEX sessions_handle_hash ON sessions (handle_hash);
-- Counting live sessions (the admin API's stats) and sweeping read only the
-- two timestamps: an index holding both answers without reading the rows.
CREATE INDEX sessions_created_seen ON sessions (created_at, last_seen_at);
