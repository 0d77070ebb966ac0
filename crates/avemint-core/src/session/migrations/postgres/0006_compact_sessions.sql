-- `sessions_created_seen` (created_at, last_seen_at) answers everything `sessions_created_at` did (its leading
-- column): one index entry less per session.
DROP INDEX sessions_created_at;
