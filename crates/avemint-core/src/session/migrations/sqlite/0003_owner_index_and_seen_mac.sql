-- The per-user session index: HMAC-SHA256 of Ave's `sub` under a key derived
-- from the session keys (never the `sub` itself). NULL for rows written before.
ALTER TABLE sessions ADD COLUMN owner_hash BLOB;
-- HMAC over the row key, `created_at` and `last_seen_at`, so an edited
-- `last_seen_at` is refused. NULL for rows written before.
ALTER TABLE sessions ADD COLUMN seen_mac BLOB;
CREATE INDEX sessions_owner_hash ON sessions (owner_hash, last_seen_at);
