-- When the refresh that set `refresh_started_at` is certainly over at Ave (its
-- send + the refresh timeout + a margin): the marker is not taken over before.
-- NULL for markers written before (taken over by their age).
ALTER TABLE sessions ADD COLUMN refresh_deadline BIGINT;
-- The pause Ave's rate limit (HTTP 429, Retry-After) asked of this client,
-- shared by every instance on this store: one row, id 1.
CREATE TABLE ave_pause (
    id BIGINT PRIMARY KEY,
    paused_until BIGINT NOT NULL
);
